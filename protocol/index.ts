/**
 * `sluice/protocol`: the contract shared by the host, the sandboxes and clients.
 * Pure TypeScript with no Node or package imports.
 */
export * from './errors.js';
export * from './assert.js';
export * from './chunk.js';
export * from './credit.js';
export * from './limits.js';
export * from './messages.js';
