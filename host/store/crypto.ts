/**
 * Encryption at rest: AES-256-GCM with a random 12-byte IV per record. The record's
 * table and key are the additional authenticated data, so a record copied onto another
 * key (another stream, another seq) fails authentication instead of being served there.
 *
 * Sealed layout: [iv 12][tag 16][ciphertext].
 */
import { Buffer } from 'node:buffer';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KEY_BYTES } from './options.js';

const ALGORITHM = 'aes-256-gcm';
export const IV_BYTES = 12;
export const TAG_BYTES = 16;
export const SEAL_OVERHEAD = IV_BYTES + TAG_BYTES;

export class RecordCipher {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    if (key.byteLength !== KEY_BYTES) throw new RangeError(`AES-256 needs a ${KEY_BYTES}-byte key`);
    this.#key = Buffer.from(key);
  }

  /** Seal `plain` into `out` starting at `offset`; `out` must have SEAL_OVERHEAD + plain.length bytes there. */
  sealInto(plain: Uint8Array, aad: string, out: Buffer, offset: number): void {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv(ALGORITHM, this.#key, iv);
    cipher.setAAD(Buffer.from(aad, 'utf8'));
    const head = cipher.update(plain);
    const tail = cipher.final();
    iv.copy(out, offset);
    cipher.getAuthTag().copy(out, offset + IV_BYTES);
    head.copy(out, offset + SEAL_OVERHEAD);
    tail.copy(out, offset + SEAL_OVERHEAD + head.length);
  }

  /** Throws when the bytes were not sealed with this key and `aad` (wrong key, tampering, moved record). */
  open(sealed: Uint8Array, aad: string): Buffer {
    if (sealed.byteLength < SEAL_OVERHEAD) throw new Error(`sealed data is ${sealed.byteLength} bytes, shorter than IV and tag`);
    const view = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const decipher = createDecipheriv(ALGORITHM, this.#key, view.subarray(0, IV_BYTES));
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(view.subarray(IV_BYTES, SEAL_OVERHEAD));
    const head = decipher.update(view.subarray(SEAL_OVERHEAD));
    const tail = decipher.final();
    return tail.length === 0 ? head : Buffer.concat([head, tail]);
  }
}
