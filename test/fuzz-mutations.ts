// JSON mutations shared by the fuzz tests: pick a node of a valid document and replace it, delete
// it, set it to an edge value, wrap it in an array, or add a sibling.
import fc from 'fast-check';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Values that sit on the edges of every check: sizes, signs, widths, types, lengths. */
export const EDGE_VALUES: Json[] = [
  -1, 0, -0, 1.5, 7, 8, 16, 4095, 4096, 65535, 65536, 2 ** 31, 2 ** 32, 2 ** 32 + 65536, 2 ** 53, 2 ** 53 + 2, 1e308, -1e308,
  '', 'x'.repeat(5000), '\u0000', '../../../etc/passwd', '/', '0'.repeat(64), 'f'.repeat(63), 'NaN', '-1', '1e3', '18446744073709551616',
  '340282366920938463463374607431768211456', null, true, false, [], {}, [null], { '': null },
];

export function paths(v: Json, prefix: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(prefix);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...prefix, i], out));
  else if (v !== null && typeof v === 'object') for (const k of Object.keys(v)) paths(v[k]!, [...prefix, k], out);
  return out;
}

export type Mutation = { path: number; op: 'replace' | 'delete' | 'edge' | 'wrap' | 'extra'; value: Json; edge: number };

/** Applies one mutation at the path-th node of a deep copy of the tree. */
export function mutate(root: Json, m: Mutation): Json {
  const copy = structuredClone(root);
  const all = paths(copy);
  const path = all[m.path % all.length]!;
  if (path.length === 0) return m.op === 'wrap' ? [copy] : m.value;
  let parent = copy as Record<string | number, Json>;
  for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, Json>;
  const key = path[path.length - 1]!;
  switch (m.op) {
    case 'replace':
      parent[key] = m.value;
      break;
    case 'edge':
      parent[key] = EDGE_VALUES[m.edge % EDGE_VALUES.length]!;
      break;
    case 'delete':
      if (Array.isArray(parent)) parent.splice(Number(key), 1);
      else delete parent[key];
      break;
    case 'wrap':
      parent[key] = [parent[key]!];
      break;
    case 'extra':
      if (Array.isArray(parent)) parent.push(m.value);
      else parent[`extra_${String(key)}`] = m.value;
      break;
  }
  return copy;
}

export const mutationArb = fc.record({
  path: fc.nat(),
  op: fc.constantFrom<Mutation['op']>('replace', 'delete', 'edge', 'wrap', 'extra'),
  value: fc.jsonValue({ maxDepth: 3 }) as fc.Arbitrary<Json>,
  edge: fc.nat(),
});

