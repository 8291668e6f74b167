/**
 * The dashboard (README.md "Commands"; its API, security and guard: docs/reliability.md): a Hono app over
 * the run store — runs table, run and sweep pages with live charts, a JSON API with an SSE stream, and
 * bearer-token remote logging — and its server behind a connection guard.
 *
 * @module
 */
export { createApp, type DashboardOptions } from "./app.ts";
export { type DashboardServer, serveDashboard, type ServeDashboardOptions } from "./server.ts";
export { downsample, MAX_POINTS } from "./downsample.ts";
export { defaultAllowedHosts, isValidId } from "./security.ts";
export { ConnectionGuard, connectionLimits, type GuardLimits, type GuardStats } from "./guard.ts";
