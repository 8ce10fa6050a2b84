// Cursor sets: the resume token of a connection that follows many topics, as the server
// writes it (relative to the request's selectors) and as the client writes it back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeCursorSet, isCursorSet, parseCursorSet } from '../pushpull.js';

const keys = ['ticker', 'orders:*'];

test('a set parses into each topic position, a prefix topic named by its rest', () => {
  const set = parseCursorSet('@0f3a9c1d2b4e5f60,0~42,1*eu~7,1*us~00000000000000ab-3', keys);
  assert.deepEqual([...set], [
    ['ticker', '0f3a9c1d2b4e5f60-42'],
    ['orders:eu', '0f3a9c1d2b4e5f60-7'],
    ['orders:us', '00000000000000ab-3'],
  ]);
  assert.deepEqual([...parseCursorSet('@', keys)], []);
});

test('what the client writes parses back the same, with the most common epoch shared', () => {
  const positions = new Map([
    ['orders:eu', '0f3a9c1d2b4e5f60-7'],
    ['ticker', '0f3a9c1d2b4e5f60-42'],
    ['orders:us', '00000000000000ab-3'],
    ['not-followed', '0f3a9c1d2b4e5f60-1'],
  ]);
  const text = encodeCursorSet(positions, keys);
  assert.equal(text, '@0f3a9c1d2b4e5f60,1*eu~7,0~42,1*us~00000000000000ab-3');
  positions.delete('not-followed');
  assert.deepEqual(parseCursorSet(text, keys), positions);
  assert.equal(encodeCursorSet(new Map(), keys), '@');
});

test('anything else is refused with a typed error', () => {
  assert.equal(isCursorSet('latest'), false);
  for (const bad of ['0~1', '@e,5~1', '@e,0']) {
    assert.throws(() => parseCursorSet(bad, keys), (e) => e.kind === 'invalid_cursor', bad);
  }
});
