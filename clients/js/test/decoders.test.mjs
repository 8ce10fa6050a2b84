// The decoders of the streaming transports, fed the wire forms in pieces as a network delivers
// them: docs/protocol/sse.md and docs/protocol/stream.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NdjsonDecoder, SseDecoder } from '../pushpull.js';

/** Everything `decoder` yields for `chunks`, fed one after another. */
function decode(decoder, chunks) {
  const out = [];
  for (const chunk of chunks) out.push(...decoder.feed(chunk));
  return out;
}

test('SSE: the preamble, a message with every field, and a gap', () => {
  const wire =
    'id: e1-0\n\n' +
    ': keep-alive\n' +
    'id: e1-1\nevent: price\ntimestamp: 1700000000000\ncontent-type: text/plain\ndata: 42.17\n\n' +
    'event: pushpull-gap\ndata: {"topic":"t","reason":"retention","first":2,"last":4,"cursor":"e1-4"}\n\n';
  const out = decode(new SseDecoder(), [wire]);
  assert.deepEqual(out[0], { start: 'e1-0' });
  assert.deepEqual(out[1], {
    type: 'message', topic: undefined, cursor: 'e1-1', offset: 1, timestamp: 1700000000000,
    event: 'price', contentType: 'text/plain', data: '42.17',
  });
  assert.equal(out[2].type, 'gap');
  assert.deepEqual([out[2].reason, out[2].first, out[2].last, out[2].cursor], ['retention', 2, 4, 'e1-4']);
  assert.equal(out.length, 3);
});

test('SSE: any split of the stream decodes the same, CRLF split across chunks included', () => {
  const wire = '\ufeffid: e-0\r\n\r\nid: e-1\r\ndata: line one\r\ndata: line two\r\n\r\nid: e-2\rdata:x\r\n\n';
  const whole = decode(new SseDecoder(), [wire]);
  assert.equal(whole.length, 3);
  assert.equal(whole[1].data, 'line one\nline two');
  assert.equal(whole[2].data, 'x');
  for (let size = 1; size < wire.length; size++) {
    const chunks = [];
    for (let i = 0; i < wire.length; i += size) chunks.push(wire.slice(i, i + size));
    assert.deepEqual(decode(new SseDecoder(), chunks), whole, `chunks of ${size}`);
  }
});

test('SSE: base64 payloads come back as bytes; retry and unknown fields are kept aside', () => {
  const decoder = new SseDecoder();
  const [message] = decode(decoder, ['retry: 2500\nid: e-7\nencoding: base64\nfoo: bar\ndata: AAH/\n\n']);
  assert.deepEqual(message.data, new Uint8Array([0, 1, 255]));
  assert.equal(message.offset, 7);
  assert.equal(decoder.retry, 2500);
});

test('SSE: an id with NUL is ignored and an event without data dispatches nothing', () => {
  const out = decode(new SseDecoder(), ['event: x\n\nid: a\0b\ndata: y\n\n']);
  assert.equal(out.length, 1);
  assert.equal(out[0].cursor, undefined);
  assert.equal(out[0].data, 'y');
});

test('NDJSON: start, message, gap and blank lines, in any split', () => {
  const records = [
    { type: 'start', cursor: 'e-0' },
    { type: 'message', topic: 't', cursor: 'e-1', offset: 1, timestamp: 5, data: 'héllo' },
    { type: 'message', topic: 't', cursor: 'e-2', offset: 2, timestamp: 6, data_base64: 'AP8=' },
    { type: 'gap', topic: 't', reason: 'epoch_changed', cursor: 'f-0', previous_epoch: 'e' },
  ];
  const wire = records.map((r) => JSON.stringify(r)).join('\n') + '\n\n';
  const whole = decode(new NdjsonDecoder(), [wire]);
  assert.deepEqual(whole[0], { start: 'e-0' });
  assert.equal(whole[1].data, 'héllo');
  assert.deepEqual(whole[2].data, new Uint8Array([0, 255]));
  assert.deepEqual([whole[3].type, whole[3].reason, whole[3].previousEpoch], ['gap', 'epoch_changed', 'e']);
  for (const size of [1, 2, 7, 33]) {
    const chunks = [];
    for (let i = 0; i < wire.length; i += size) chunks.push(wire.slice(i, i + size));
    assert.deepEqual(decode(new NdjsonDecoder(), chunks), whole, `chunks of ${size}`);
  }
});

test('NDJSON: a record cut off mid-line waits for the rest', () => {
  const decoder = new NdjsonDecoder();
  assert.deepEqual([...decoder.feed('{"type":"start","cur')], []);
  assert.deepEqual([...decoder.feed('sor":"e-3"}\n')], [{ start: 'e-3' }]);
});
