/**
 * A data-processing stream: CSV text in, typed records out, one at a time, so a slow
 * consumer pauses the parsing itself. Resumable: it checkpoints the line it reached
 * and a resumed run skips straight there.
 */
import { definePlugin, ParamsError, type PluginContext } from 'sluice/sdk';

interface Params {
  csv?: string;
  rows?: number;
  minAmount?: number;
}

interface Record {
  id: number;
  name: string;
  category: string;
  amountCents: number;
  large: boolean;
}

const CATEGORIES = ['books', 'games', 'tools', 'food'];
const CHECKPOINT_EVERY = 100;

/** A deterministic sample, generated lazily so a large `rows` costs no memory. */
function* sample(rows: number): Generator<string> {
  yield 'id,name,category,amount';
  for (let i = 0; i < rows; i++) yield `${i},item-${i},${CATEGORIES[i % CATEGORIES.length]},${((i * 7919) % 10000) / 100}`;
}

function* lines(text: string): Generator<string> {
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const line = text.slice(start, end).replace(/\r$/, '');
    if (line.length > 0) yield line;
    start = end + 1;
  }
}

function* parse(params: Params): Generator<Record> {
  const source = params.csv !== undefined ? lines(params.csv) : sample(params.rows ?? 1000);
  const header = source.next();
  if (header.done === true) return;
  const cols = header.value.split(',').map((c) => c.trim().toLowerCase());
  const at = (name: string): number => {
    const i = cols.indexOf(name);
    if (i < 0) throw new ParamsError(`CSV header has no \`${name}\` column (columns: ${cols.join(', ')})`);
    return i;
  };
  const [id, name, category, amount] = [at('id'), at('name'), at('category'), at('amount')];
  let lineNo = 1;
  for (const line of source) {
    lineNo++;
    const f = line.split(',');
    const cents = Math.round(Number(f[amount]) * 100);
    if (!Number.isFinite(cents)) throw new ParamsError(`line ${lineNo}: amount \`${f[amount]}\` is not a number`);
    yield { id: Number(f[id]), name: (f[name] ?? '').trim(), category: (f[category] ?? 'other').trim(), amountCents: cents, large: cents >= 5000 };
  }
}

export default definePlugin({
  actions: {
    async *transform(params: Params, ctx: PluginContext) {
      const total = params.csv === undefined ? (params.rows ?? 1000) : undefined;
      const skip = ctx.resume?.seq ?? 0;
      let emitted = 0;
      let index = 0;
      for (const record of parse(params)) {
        if (params.minAmount !== undefined && record.amountCents < params.minAmount * 100) continue;
        // Output seq n is the n-th kept record: skip those a previous run already delivered.
        if (index++ < skip) continue;
        if ((skip + emitted) % CHECKPOINT_EVERY === 0) ctx.checkpoint({ records: skip + emitted });
        if (total !== undefined && record.id % 50 === 0) ctx.progress(Math.min(1, record.id / total), `record ${record.id}`);
        yield record;
        emitted++;
      }
      ctx.progress(1, `${skip + emitted} records`);
    },

    /** A sink: totals of records read from another stream (`params.input`), one at a time. */
    async total({ input }: { input: AsyncIterable<Record> }) {
      let count = 0;
      let amountCents = 0;
      for await (const r of input) {
        count++;
        amountCents += r.amountCents;
      }
      return { count, amountCents };
    },

    async summarize(params: Params) {
      const totals: { [category: string]: { count: number; amountCents: number } } = {};
      for (const r of parse(params)) {
        const t = (totals[r.category] ??= { count: 0, amountCents: 0 });
        t.count++;
        t.amountCents += r.amountCents;
      }
      return totals;
    },
  },
});
