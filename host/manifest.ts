/**
 * Manifest validation. A manifest comes from `plugin.json`, the `sluice` key of a
 * plugin folder's `package.json`, or the module's exported `manifest`; the files win
 * over the export, field by field. Everything is checked here, at the trust boundary,
 * with messages that name the field.
 */
import { z } from 'zod';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import { SluiceError } from '../protocol/errors.js';
import { parsePartialLimits } from '../protocol/limits.js';
import type { PluginManifest } from '../sandbox/sdk.js';

const NAME = /^[a-z0-9][a-z0-9._-]{0,127}$/i;

const ManifestSchema = z
  .object({
    name: z.string().regex(NAME, 'letters, digits, dot, dash and underscore, starting with a letter or digit'),
    version: z.string().min(1).max(64),
    description: z.string().max(4096).optional(),
    sandbox: z.enum(['worker', 'isolate']).optional(),
    limits: z.unknown().optional(),
    permissions: z.array(z.string().max(256)).max(64).optional(),
    actions: z
      .record(
        z.string(),
        z.object({ description: z.string().max(4096).optional(), params: z.union([z.boolean(), z.record(z.string(), z.unknown())]).optional() }).strict(),
      )
      .optional(),
    entry: z.string().optional(),
  })
  .strict();

export interface ValidatedManifest extends PluginManifest {
  sandbox: 'worker' | 'isolate';
}

/** Validate a merged manifest; `where` names its source in error messages. */
export function validateManifest(raw: unknown, where: string): ValidatedManifest {
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? issue.path.join('.') : '(root)';
    throw new SluiceError('ERR_MANIFEST_INVALID', `Invalid manifest in ${where}: \`${field}\`: ${issue.message}`, { details: { field, where } });
  }
  const m = parsed.data;
  const limits = parsePartialLimits(m.limits, 'manifest.limits', 'ERR_MANIFEST_INVALID');
  const out: ValidatedManifest = { name: m.name, version: m.version, sandbox: m.sandbox ?? 'isolate', limits };
  if (m.description !== undefined) out.description = m.description;
  if (m.permissions !== undefined) out.permissions = m.permissions;
  if (m.actions !== undefined) out.actions = m.actions;
  return out;
}

/**
 * JSON Schema validators for each action's params, compiled once per plugin. A schema
 * that does not compile is a manifest error, reported when the plugin loads.
 */
export class ParamsValidator {
  readonly #validators = new Map<string, ValidateFunction>();

  constructor(manifest: PluginManifest, where: string) {
    const ajv = new Ajv2020({ allErrors: false, strict: false });
    for (const [action, spec] of Object.entries(manifest.actions ?? {})) {
      if (spec.params === undefined) continue;
      try {
        this.#validators.set(action, ajv.compile(spec.params as object));
      } catch (err) {
        throw new SluiceError('ERR_MANIFEST_INVALID', `Invalid params schema for action \`${action}\` in ${where}: ${(err as Error).message}`);
      }
    }
  }

  check(action: string, params: unknown): void {
    const validate = this.#validators.get(action);
    if (validate === undefined || validate(params)) return;
    const e = validate.errors?.[0];
    const at = e?.instancePath === '' || e === undefined ? 'params' : `params${e.instancePath.replaceAll('/', '.')}`;
    throw new SluiceError('ERR_PARAMS_INVALID', `Invalid params for action \`${action}\`: \`${at}\` ${e?.message ?? 'is invalid'}`, { details: { path: at } });
  }
}
