// The continuity rule: what a subscription hands over after its last delivery (the Rust
// client's `Position`), and the cursors it reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { continuity, parseCursor } from '../pushpull.js';

const message = (cursor) => ({ type: 'message', cursor, offset: parseCursor(cursor).offset });

test('cursors: EPOCH-OFFSET parses; beginning, latest and malformed ones do not', () => {
  assert.deepEqual(parseCursor('a1b2-17'), { epoch: 'a1b2', offset: 17 });
  // `e-` once read as offset 0 and `e--1` as epoch `e-`: the server refuses both.
  for (const bad of ['beginning', 'latest', '-3', 'e-', 'e-x', 'e--1', 'a-b-3', 'e-1.5', 'e- 1', undefined, 7]) {
    assert.equal(parseCursor(bad), null, String(bad));
  }
});

test('from beginning or latest, anything is next', () => {
  assert.equal(continuity('beginning', message('e-9')), 'next');
  assert.equal(continuity('latest', message('e-1')), 'next');
});

test('the next offset is next; one at or before the position repeats; one further skips', () => {
  assert.equal(continuity('e-4', message('e-5')), 'next');
  assert.equal(continuity('e-4', message('e-4')), 'repeat');
  assert.equal(continuity('e-4', message('e-2')), 'repeat');
  assert.equal(continuity('e-4', message('e-6')), 'skip');
  assert.equal(continuity('e-4', message('f-5')), 'skip', 'another epoch without a gap');
});

test('a retention gap is next when it starts right after the position', () => {
  const gap = (first, last) => ({ type: 'gap', reason: 'retention', first, last, cursor: `e-${last}` });
  assert.equal(continuity('e-4', gap(5, 9)), 'next');
  assert.equal(continuity('e-4', gap(6, 9)), 'skip');
  assert.equal(continuity('e-9', gap(5, 9)), 'repeat');
});

test('an epoch change is next only from the epoch it names', () => {
  const changed = { type: 'gap', reason: 'epoch_changed', cursor: 'f-0', previousEpoch: 'e' };
  assert.equal(continuity('e-4', changed), 'next');
  assert.equal(continuity('d-4', changed), 'skip');
  assert.equal(continuity('e-4', { type: 'message', cursor: 'nonsense', offset: 1 }), 'skip');
});
