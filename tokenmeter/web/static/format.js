// Number, money, time and unit formatting for the dashboard (en locale: 12,345 tokens, CN¥1.2345, 85.3 %).

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

export function number(value) {
  if (!isNumber(value)) return "–";
  return Number.isInteger(value) ? integer.format(value) : decimal.format(value);
}

export function compactNumber(value) {
  return isNumber(value) ? compact.format(value) : "–";
}

// Costs keep up to 4 decimals below 1 (local models cost fractions of a fen per call).
export function money(value, currency) {
  if (!isNumber(value)) return "–";
  const digits = Math.abs(value) < 1 ? 4 : 2;
  // Below a hundredth of a cent, two significant digits instead of a misleading 0.00.
  const tiny = value !== 0 && Math.abs(value) < 0.0001;
  try {
    return new Intl.NumberFormat("en-US", tiny ? { style: "currency", currency, maximumSignificantDigits: 2 } : {
      style: "currency", currency, minimumFractionDigits: 2, maximumFractionDigits: digits,
    }).format(value);
  } catch {
    return `${value.toFixed(digits)} ${currency || ""}`.trim();  // not an ISO 4217 code
  }
}

export function percent(ratio) {
  return isNumber(ratio) ? `${(ratio * 100).toFixed(1)} %` : "–";
}

export function seconds(value) {
  if (!isNumber(value)) return "–";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${decimal.format(value)} s`;
  return `${decimal.format(value / 60)} min`;
}

const dateTime = new Intl.DateTimeFormat("en-GB", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export function time(ms) {
  return isNumber(ms) ? dateTime.format(new Date(ms)) : "–";
}

export function ago(ms, nowMs = Date.now()) {
  if (!isNumber(ms)) return "never";
  const secondsAgo = Math.max(0, Math.round((nowMs - ms) / 1000));
  if (secondsAgo < 90) return `${secondsAgo} s ago`;
  if (secondsAgo < 5400) return `${Math.round(secondsAgo / 60)} min ago`;
  if (secondsAgo < 172800) return `${Math.round(secondsAgo / 3600)} h ago`;
  return `${Math.round(secondsAgo / 86400)} days ago`;
}

// The currency of a cost series named like "CNY" or "CNY (virtual)".
export function currencyOfLabel(label) {
  return String(label).split(" ")[0];
}

// A value in a unit: tokens, calls, cost, percentunit, s, datetime, short.
export function withUnit(value, unit, currency) {
  switch (unit) {
    case "tokens": return `${number(value)} tokens`;
    case "calls": return `${number(value)} calls`;
    case "cost": return money(value, currency);
    case "percentunit": return percent(value);
    case "s": return seconds(value);
    case "datetime": return time(value);
    default: return number(value);
  }
}

// A table cell: the unit is in the column header, so only money and times carry theirs.
export function cell(value, unit, currency) {
  if (value === null || value === undefined) return "–";
  switch (unit) {
    case "cost": return money(value, currency);
    case "percentunit": return percent(value);
    case "s": return seconds(value);
    case "datetime": return time(value);
    default: return isNumber(value) ? number(value) : String(value);
  }
}

export function axisTick(value, unit) {
  if (unit === "percentunit") return `${Math.round(value * 100)} %`;
  if (unit === "s") return seconds(value);
  if (value !== 0 && Math.abs(value) < 10) return String(Number(value.toPrecision(3)));
  return compactNumber(value);
}
