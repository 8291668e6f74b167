/**
 * The x axes of the dashboard's charts, shared by the series (series.ts), their builder (series_builder.ts),
 * the series cache and the API that reads `?x=`.
 *
 * @module
 */

/** What a chart's x axis shows. */
export type XAxis = "step" | "tokens" | "time";

/** The x axes a client may ask for. */
export const X_AXES: readonly XAxis[] = ["step", "tokens", "time"];
