#!/usr/bin/env node
// A Node.js client of nerve.v1 (grpc-js over the repository's protos), for tests/client/test_node_offsets.py.
//
//   node offsets.js HOST:PORT PROTO_ROOT < cases.json
//
// cases.json: [{"text": "...", "mentions": ["...", ...]}, ...]. For every text the script calls Extract once per
// offset unit and checks the offsets the way a JavaScript program uses them:
//   - OFFSET_UNIT_UTF16: text.slice(start, end) is the entity (JavaScript strings are UTF-16);
//   - OFFSET_UNIT_CODE_POINT (and UNSPECIFIED, the default): the entity is code points [start, end) of the text,
//     and where a code point beyond U+FFFF comes before or inside the entity these offsets differ from the
//     UTF-16 ones, so that text.slice would cut the wrong characters;
//   - OFFSET_UNIT_UTF8: bytes [start, end) of the UTF-8 encoding are the entity.
// It prints one JSON object per text and unit ({text, unit, entities}) and exits 1 when a check fails, 2 when a
// call fails.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const UNITS = ['OFFSET_UNIT_UNSPECIFIED', 'OFFSET_UNIT_CODE_POINT', 'OFFSET_UNIT_UTF16', 'OFFSET_UNIT_UTF8'];
const ASTRAL = /[\u{10000}-\u{10FFFF}]/u;

function nerveClient(target, protoRoot) {
  const definition = protoLoader.loadSync(path.join('nerve', 'v1', 'service.proto'), {
    includeDirs: [protoRoot], keepCase: true, enums: String, longs: Number, defaults: true, oneofs: true,
  });
  const { NerveService } = grpc.loadPackageDefinition(definition).nerve.v1;
  return new NerveService(target, grpc.credentials.createInsecure());
}

function extract(client, text, unit) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30000);
    client.Extract({ text, offset_unit: unit }, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function codePoints(text, start, end) {
  return Array.from(text).slice(start, end).join('');
}

function utf8(text, start, end) {
  return Buffer.from(text, 'utf8').subarray(start, end).toString('utf8');
}

const failures = [];

function check(ok, message) {
  if (!ok) failures.push(message);
}

async function main() {
  const [target, protoRoot] = process.argv.slice(2);
  const cases = JSON.parse(fs.readFileSync(0, 'utf8'));
  const client = nerveClient(target, protoRoot);
  try {
    for (const { text, mentions } of cases) {
      const got = {};
      for (const unit of UNITS) {
        const response = await extract(client, text, unit);
        got[unit] = response.entities;
        console.log(JSON.stringify({ text, unit, entities: response.entities }));
        check(JSON.stringify(response.entities.map((e) => e.text)) === JSON.stringify(mentions),
          `${JSON.stringify(text)} ${unit}: entities ${JSON.stringify(response.entities.map((e) => e.text))}, ` +
          `expected ${JSON.stringify(mentions)}`);
      }
      got.OFFSET_UNIT_UTF16.forEach((e, i) => {
        const where = `${JSON.stringify(text)} entity ${JSON.stringify(e.text)}`;
        check(text.slice(e.start, e.end) === e.text,
          `${where}: text.slice(${e.start}, ${e.end}) is ${JSON.stringify(text.slice(e.start, e.end))} (UTF-16)`);
        const cp = got.OFFSET_UNIT_CODE_POINT[i];
        check(codePoints(text, cp.start, cp.end) === e.text, `${where}: code points [${cp.start}, ${cp.end}) differ`);
        const dflt = got.OFFSET_UNIT_UNSPECIFIED[i];
        check(dflt.start === cp.start && dflt.end === cp.end, `${where}: the default unit is not code points`);
        const u8 = got.OFFSET_UNIT_UTF8[i];
        check(utf8(text, u8.start, u8.end) === e.text, `${where}: UTF-8 bytes [${u8.start}, ${u8.end}) differ`);
        if (ASTRAL.test(text.slice(0, e.end))) { // a character beyond U+FFFF before or inside the entity
          check(cp.start !== e.start || cp.end !== e.end, `${where}: code-point offsets equal the UTF-16 ones`);
          check(text.slice(cp.start, cp.end) !== e.text, `${where}: text.slice works on code-point offsets`);
        } else {
          check(cp.start === e.start && cp.end === e.end, `${where}: code points and UTF-16 differ without astral`);
        }
      });
    }
  } catch (err) {
    console.error(`Extract failed: ${err.code} ${err.details || err.message}`);
    process.exitCode = 2;
    return;
  } finally {
    client.close();
  }
  if (failures.length) {
    console.error(failures.join('\n'));
    process.exitCode = 1;
  }
}

main();
