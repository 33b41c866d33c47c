/**
 * Bundling a plugin for the worker sandbox: one ES module (TypeScript allowed),
 * written content-addressed into the cache folder so a path always means the same
 * code and a worker can cache what it imported. `sluice/sdk` resolves to this
 * package's SDK wherever the plugin lives.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Message } from 'esbuild';
import { SluiceError } from '../protocol/errors.js';

export const SDK_PATH = fileURLToPath(new URL('../sandbox/sdk.js', import.meta.url));

// CommonJS dependencies bundled into ESM still call require(); give them one.
const REQUIRE_SHIM = "import { createRequire as __sluiceCreateRequire } from 'node:module'; const require = __sluiceCreateRequire(import.meta.url);";

export function formatEsbuildMessages(messages: Message[]): string {
  return messages
    .slice(0, 5)
    .map((m) => (m.location === null ? m.text : `${m.location.file}:${m.location.line}:${m.location.column}: ${m.text}`))
    .join('; ');
}

export function contentId(code: string): string {
  return createHash('sha256').update(code).digest('hex').slice(0, 20);
}

/** Bundle `entryPath` for a worker; returns the bundle's path and content id. */
export async function bundleForWorker(entryPath: string, cacheDir: string): Promise<{ id: string; modulePath: string }> {
  let code: string;
  try {
    const result = await build({
      entryPoints: [entryPath],
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'node',
      target: 'node20',
      logLevel: 'silent',
      alias: { 'sluice/sdk': SDK_PATH },
      banner: { js: REQUIRE_SHIM },
    });
    code = result.outputFiles[0]!.text;
  } catch (err) {
    const errors = (err as { errors?: Message[] }).errors;
    const detail = errors !== undefined ? formatEsbuildMessages(errors) : (err as Error).message;
    throw new SluiceError('ERR_PLUGIN_LOAD', `Bundling ${entryPath} failed: ${detail}`, { cause: err });
  }
  const id = contentId(code);
  const modulePath = join(cacheDir, `${id}.mjs`);
  await mkdir(cacheDir, { recursive: true, mode: 0o700 });
  // Write then rename, so a worker never imports a half-written file.
  const tmp = `${modulePath}.${process.pid}.${Date.now()}.tmp`;
  await writeFile(tmp, code, { mode: 0o600 });
  await rename(tmp, modulePath);
  return { id, modulePath };
}
