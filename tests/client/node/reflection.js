#!/usr/bin/env node
// Server reflection from Node.js, as grpcurl uses it: ask grpc.reflection.v1 for the services, fetch the file that
// defines nerve.v1.NerveService (with its dependencies), then call Extract with the definitions that came back,
// none read from the repository.
//
//   node reflection.js HOST:PORT REFLECTION_DESCRIPTORS TEXT
//
// REFLECTION_DESCRIPTORS is a serialized FileDescriptorSet of the reflection protocol's messages (v1 has the
// messages of v1alpha under another package name). The script prints one JSON object
// ({services, reflected, entities}) and exits 1 when the reflection or the call fails.
'use strict';

const fs = require('node:fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const OPTIONS = { keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true };
const V1_PATH = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';

function reflectionClient(target, descriptors) {
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(fs.readFileSync(descriptors), OPTIONS);
  const method = definition['grpc.reflection.v1alpha.ServerReflection'].ServerReflectionInfo;
  const Client = grpc.makeGenericClientConstructor({ ServerReflectionInfo: { ...method, path: V1_PATH } },
    'ServerReflection');
  return new Client(target, grpc.credentials.createInsecure());
}

// Send the requests on one stream; resolve with the responses, one per request.
function reflect(client, requests) {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo({ deadline: new Date(Date.now() + 30000) });
    const responses = [];
    call.on('data', (r) => {
      responses.push(r);
      if (responses.length === requests.length) call.end();
    });
    call.on('error', reject);
    call.on('end', () => resolve(responses));
    requests.forEach((r) => call.write(r));
  });
}

// A FileDescriptorSet (field 1: repeated FileDescriptorProto) of serialized FileDescriptorProtos.
function descriptorSet(files) {
  const parts = [];
  for (const file of files) {
    const length = [];
    for (let n = file.length; ; n >>>= 7) {
      if (n < 0x80) { length.push(n); break; }
      length.push((n & 0x7f) | 0x80);
    }
    parts.push(Buffer.from([0x0a, ...length]), file);
  }
  return Buffer.concat(parts);
}

async function main() {
  const [target, descriptors, text] = process.argv.slice(2);
  const client = reflectionClient(target, descriptors);
  const [listed, found] = await reflect(client, [
    { list_services: '*' }, { file_containing_symbol: 'nerve.v1.NerveService' },
  ]);
  client.close();
  for (const r of [listed, found]) {
    if (r.message_response === 'error_response') {
      throw new Error(`reflection error ${r.error_response.error_code}: ${r.error_response.error_message}`);
    }
  }
  const services = listed.list_services_response.service.map((s) => s.name);
  const files = found.file_descriptor_response.file_descriptor_proto;
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(files), OPTIONS);
  const { NerveService } = grpc.loadPackageDefinition(definition).nerve.v1;
  const nerve = new NerveService(target, grpc.credentials.createInsecure());
  const response = await new Promise((resolve, reject) => {
    nerve.Extract({ text, offset_unit: 'OFFSET_UNIT_UTF16' }, { deadline: new Date(Date.now() + 30000) },
      (err, r) => (err ? reject(err) : resolve(r)));
  });
  nerve.close();
  // services are the definitions without a `format` (messages and enums have one)
  const reflected = Object.keys(definition).filter((k) => !('format' in definition[k]));
  console.log(JSON.stringify({
    services, reflected, entities: response.entities.map((e) => ({ ...e, slice: text.slice(e.start, e.end) })),
  }));
}

main().catch((err) => {
  console.error(err.details ? `${err.code} ${err.details}` : String(err.stack || err));
  process.exitCode = 1;
});
