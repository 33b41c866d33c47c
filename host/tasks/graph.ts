/**
 * The dependency DAG: validation (unknown ids, cycles) and the orders the runner needs.
 * Iterative walks throughout, so a 10,000-task chain does not overflow the stack.
 */
import { SluiceError } from '../../protocol/errors.js';

export interface GraphNode {
  readonly id: string;
  /** Ids that must finish before this node starts. */
  readonly dependsOn: readonly string[];
}

/**
 * Throw ERR_TASK_NOT_FOUND for a dependency no node has, and ERR_TASK_CYCLE for a cycle,
 * naming it in order: `a -> b -> c -> a` (`details.cycle` is `['a', 'b', 'c', 'a']`).
 */
export function checkGraph(nodes: readonly GraphNode[]): void {
  const ids = new Set(nodes.map((n) => n.id));
  for (const node of nodes) {
    for (const dep of node.dependsOn) {
      if (!ids.has(dep)) {
        throw new SluiceError('ERR_TASK_NOT_FOUND', `Task \`${node.id}\` depends on \`${dep}\`, which is not in the graph`, {
          details: { field: `tasks.${node.id}.dependsOn`, task: node.id, dependency: dep },
        });
      }
    }
  }
  const cycle = findCycle(nodes);
  if (cycle !== undefined) {
    throw new SluiceError('ERR_TASK_CYCLE', `Task dependencies form a cycle: ${cycle.join(' -> ')}`, { details: { cycle } });
  }
}

const WHITE = 0;
const GREY = 1;
const BLACK = 2;

/** The first cycle found, as a closed path `[a, b, ..., a]` where each depends on the next; undefined for a DAG. */
export function findCycle(nodes: readonly GraphNode[]): string[] | undefined {
  const deps = new Map(nodes.map((n) => [n.id, n.dependsOn]));
  const color = new Map<string, number>();
  for (const root of nodes) {
    if ((color.get(root.id) ?? WHITE) !== WHITE) continue;
    // Explicit DFS stack of [node, next dependency index]; `path` mirrors the grey nodes.
    const stack: [string, number][] = [[root.id, 0]];
    const path: string[] = [root.id];
    color.set(root.id, GREY);
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      const list = deps.get(top[0]) ?? [];
      if (top[1] >= list.length) {
        color.set(top[0], BLACK);
        stack.pop();
        path.pop();
        continue;
      }
      const next = list[top[1]++]!;
      const c = color.get(next) ?? WHITE;
      if (c === GREY) return [...path.slice(path.indexOf(next)), next];
      if (c === WHITE && deps.has(next)) {
        color.set(next, GREY);
        stack.push([next, 0]);
        path.push(next);
      }
    }
  }
  return undefined;
}

/** Every node that depends on `id`, directly or not, in breadth-first order. */
export function dependentsOf(id: string, dependents: ReadonlyMap<string, readonly string[]>): string[] {
  const out: string[] = [];
  const seen = new Set([id]);
  const queue = [id];
  for (let i = 0; i < queue.length; i++) {
    for (const d of dependents.get(queue[i]!) ?? []) {
      if (seen.has(d)) continue;
      seen.add(d);
      out.push(d);
      queue.push(d);
    }
  }
  return out;
}

/** Reverse edges: for each id, the nodes that list it in `dependsOn`. */
export function reverseEdges(nodes: readonly GraphNode[]): Map<string, string[]> {
  const out = new Map<string, string[]>(nodes.map((n) => [n.id, []]));
  for (const node of nodes) for (const dep of node.dependsOn) out.get(dep)?.push(node.id);
  return out;
}
