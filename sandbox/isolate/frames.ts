/**
 * The data path from a sandbox process to the host: stream items travel in frames on a
 * pipe of their own (fd DATA_FD in the process, see host/sandbox/isolate-pool.ts), not as
 * IPC messages. IPC's `advanced` serialization copies a batch's packed bytes into its
 * own growing buffer on one side and rebuilds them from a concatenated read buffer on
 * the other (about 0.5 us per 1 KiB chunk in the process alone); here they go to the
 * socket as they are and are copied once, straight into their own ArrayBuffer, on the
 * host side.
 *
 * Frame: u32 LE `metaBytes`, u32 LE `bodyBytes`, then `metaBytes` of
 * `v8.serialize({ items, lens })`, then `bodyBytes` of packed bytes. `items` are the
 * OutItems with each packed batch's `packed.buffer` left out; `lens[k]` is how many
 * bytes of the body belong to the k-th of those batches, in order, and they become its
 * buffer again on the host. The host parses every item as before; a frame that does not
 * add up is a broken process.
 */
import { deserialize, serialize } from 'node:v8';
import { SluiceError, type WireError } from '../../protocol/errors.js';
import type { FromSandbox } from '../../protocol/messages.js';
import { packedLength } from '../../protocol/chunk.js';

/** The process's end of the data pipe: stdio entry 4 of the fork (0-2 std, 3 IPC). */
export const DATA_FD = 4;

/** A stream's message, or its abnormal end (`x`: limit, kill, bad output, load failure). */
export type OutItem = { s: string; m: FromSandbox } | { s: string; x: WireError };

const PREFIX_BYTES = 8;
/** Larger than any frame the process sends (a batch is at most a few MiB, times 64 streams). */
const MAX_META_BYTES = 256 * 1024 * 1024;
const MAX_BODY_BYTES = 1024 * 1024 * 1024;

/**
 * Encode `items` as one frame: buffers to write back to back (cork the socket around
 * them). Packed bytes are not copied: the frame holds views of the batches' own buffers,
 * which the caller must not reuse. Each packed batch has been checked (`checkPacking`),
 * so its sizes fit its buffer.
 */
export function encodeFrame(items: OutItem[]): Uint8Array[] {
  const lens: number[] = [];
  const bodies: Uint8Array[] = [];
  let bodyBytes = 0;
  const meta = items.map((item): unknown => {
    if (!('m' in item) || item.m.type !== 'batch' || item.m.packed === undefined) return item;
    const { buffer, sizes } = item.m.packed;
    const used = packedLength(sizes);
    bodies.push(new Uint8Array(buffer, 0, used));
    lens.push(used);
    bodyBytes += used;
    // The buffer travels in the body; the host puts it back (FrameReader).
    return { s: item.s, m: { ...item.m, packed: { sizes } } };
  });
  const head = serialize({ items: meta, lens });
  const prefix = Buffer.allocUnsafe(PREFIX_BYTES);
  prefix.writeUInt32LE(head.length, 0);
  prefix.writeUInt32LE(bodyBytes, 4);
  return [prefix, head, ...bodies];
}

class BrokenFrame extends Error {}

function broken(what: string): never {
  throw new BrokenFrame(what);
}

/**
 * Reassembles frames from the pipe's reads and hands each frame's items (unparsed: the
 * host parses every one) to `onItems`. A frame that does not add up goes to `onBroken`
 * (ERR_PROTOCOL) and the reader ignores everything after it: the process that sent it
 * is broken. What `onItems` throws, `push` rethrows after the rest of the read.
 */
export class FrameReader {
  /** Prefix and meta bytes gathered so far (small). */
  #head: Buffer[] = [];
  #headBytes = 0;
  #metaBytes = -1;
  #bodyBytes = 0;
  /** Set once the meta is read: the items, waiting for their packed bytes. */
  #items: unknown[] | undefined;
  #targets: Uint8Array[] = [];
  #target = 0;
  #filled = 0;
  #thrown: { err: unknown } | undefined;

  #broken = false;

  constructor(
    private readonly onItems: (items: unknown[]) => void,
    private readonly onBroken: (err: SluiceError) => void,
  ) {}

  push(chunk: Buffer): void {
    if (this.#broken) return;
    let off = 0;
    this.#thrown = undefined;
    try {
      while (off < chunk.length) {
        if (this.#items === undefined) off = this.#readHead(chunk, off);
        else off = this.#readBody(chunk, off);
      }
    } catch (err) {
      if (!(err instanceof BrokenFrame)) throw err;
      this.#broken = true;
      this.onBroken(new SluiceError('ERR_PROTOCOL', `Sandbox process sent a bad data frame: ${err.message}`));
      return;
    }
    // A listener that threw does not cost the frames after it in this read.
    // (Set by #skipFull inside the loop; TypeScript cannot see that.)
    const thrown = this.#thrown as { err: unknown } | undefined;
    if (thrown !== undefined) throw thrown.err;
  }

  #readHead(chunk: Buffer, off: number): number {
    const want = (this.#metaBytes < 0 ? PREFIX_BYTES : PREFIX_BYTES + this.#metaBytes) - this.#headBytes;
    const take = Math.min(want, chunk.length - off);
    this.#head.push(chunk.subarray(off, off + take));
    this.#headBytes += take;
    if (take < want) return off + take;
    const head = this.#head.length === 1 ? this.#head[0]! : Buffer.concat(this.#head, this.#headBytes);
    this.#head = [head];
    if (this.#metaBytes < 0) {
      this.#metaBytes = head.readUInt32LE(0);
      this.#bodyBytes = head.readUInt32LE(4);
      if (this.#metaBytes === 0 || this.#metaBytes > MAX_META_BYTES) broken(`meta of ${this.#metaBytes} bytes`);
      if (this.#bodyBytes > MAX_BODY_BYTES) broken(`body of ${this.#bodyBytes} bytes`);
      return off + take;
    }
    this.#startBody(head.subarray(PREFIX_BYTES));
    return off + take;
  }

  #startBody(metaBytes: Buffer): void {
    let meta: { items?: unknown; lens?: unknown };
    try {
      meta = deserialize(metaBytes) as typeof meta;
    } catch (err) {
      return broken(`meta does not deserialize (${String((err as Error)?.message ?? err)})`);
    }
    const { items, lens } = meta ?? {};
    if (!Array.isArray(items) || !Array.isArray(lens)) return broken('meta is not { items, lens }');
    let total = 0;
    const targets: Uint8Array[] = [];
    for (const len of lens) {
      if (!Number.isSafeInteger(len) || (len as number) < 0) return broken(`length ${String(len)}`);
      total += len as number;
      targets.push(new Uint8Array(len as number));
    }
    if (total !== this.#bodyBytes) return broken(`lengths add up to ${total}, body has ${this.#bodyBytes} bytes`);
    let k = 0;
    for (const item of items as Array<{ m?: { type?: unknown; packed?: { buffer?: unknown } } } | null>) {
      const packed = item?.m?.type === 'batch' ? item.m.packed : undefined;
      if (packed === null || typeof packed !== 'object') continue;
      const target = targets[k++];
      if (target === undefined) return broken('more packed batches than lengths');
      packed.buffer = target.buffer;
    }
    if (k !== targets.length) broken('more lengths than packed batches');
    this.#items = items;
    this.#targets = targets;
    this.#target = 0;
    this.#filled = 0;
    this.#head = [];
    this.#headBytes = 0;
    this.#metaBytes = -1;
    this.#skipFull();
  }

  #readBody(chunk: Buffer, off: number): number {
    const target = this.#targets[this.#target]!;
    const take = Math.min(target.length - this.#filled, chunk.length - off);
    target.set(chunk.subarray(off, off + take), this.#filled);
    this.#filled += take;
    this.#skipFull();
    return off + take;
  }

  /** Move past filled (or empty) targets; deliver the frame when none is left. */
  #skipFull(): void {
    while (this.#target < this.#targets.length && this.#filled === this.#targets[this.#target]!.length) {
      this.#target++;
      this.#filled = 0;
    }
    if (this.#target < this.#targets.length) return;
    const items = this.#items!;
    this.#items = undefined;
    this.#targets = [];
    try {
      this.onItems(items);
    } catch (err) {
      this.#thrown ??= { err };
    }
  }
}
