// Formatting shared by the console's pages: payloads (JSON pretty-printed, text, binary as
// hex), numbers, durations, times, and a small DOM builder.

const strict = new TextDecoder('utf-8', { fatal: true });

/** A payload as UTF-8 text, or null when it is not UTF-8. */
export function utf8(bytes) {
  try {
    return strict.decode(bytes);
  } catch {
    return null;
  }
}

/** `bytes` as an offset / hex / ASCII dump, at most `max` bytes shown. */
export function hexDump(bytes, max = 4096) {
  const lines = [];
  const shown = Math.min(bytes.length, max);
  for (let offset = 0; offset < shown; offset += 16) {
    const row = bytes.subarray(offset, Math.min(offset + 16, shown));
    const hex = [...row].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${offset.toString(16).padStart(6, '0')}  ${hex.padEnd(47)}  ${ascii}`);
  }
  if (bytes.length > shown) lines.push(`… ${bytes.length - shown} more bytes`);
  return lines.join('\n');
}

/**
 * How to show a payload: { kind: 'json' | 'text' | 'binary' | 'empty', text, number }.
 * `number` is the payload's numeric value when it is one (a bare number, or JSON holding one),
 * for sparklines.
 */
export function describePayload(bytes) {
  if (bytes.length === 0) return { kind: 'empty', text: '', number: null };
  const text = utf8(bytes);
  if (text === null) return { kind: 'binary', text: hexDump(bytes), number: null };
  const trimmed = text.trim();
  const number = trimmed !== '' && Number.isFinite(Number(trimmed)) ? Number(trimmed) : null;
  if (/^[[{]/.test(trimmed)) {
    try {
      return { kind: 'json', text: JSON.stringify(JSON.parse(trimmed), null, 2), number };
    } catch {
      // Not JSON after all: shown as text.
    }
  }
  return { kind: 'text', text, number };
}

/** A payload in one short line, for lists. */
export function previewPayload(bytes, max = 80) {
  const text = utf8(bytes);
  const line = text === null
    ? [...bytes.subarray(0, 32)].map((b) => b.toString(16).padStart(2, '0')).join(' ')
    : text.replace(/\s+/g, ' ');
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** Base64 to bytes. */
export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

/** 1234 → "1234", 12345 → "12.3k", 1.2e6 → "1.2M"; fractions with one decimal. */
export function number(value) {
  if (value == null || !Number.isFinite(value)) return '–';
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return abs >= 100 || Number.isInteger(value) ? String(Math.round(value)) : value.toFixed(1);
}

/** Bytes with a binary unit. */
export function bytesText(n) {
  if (n == null) return '–';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** Seconds as "3d 4h 5m 6s". */
export function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return [d && `${d}d`, (d || h) && `${h}h`, (d || h || m) && `${m}m`, `${s}s`].filter(Boolean).join(' ');
}

/** An RFC 3339 time as local date and time, and how long ago. */
export function when(iso) {
  if (!iso) return '–';
  const time = new Date(iso);
  const ago = Math.max(0, (Date.now() - time.getTime()) / 1000);
  return `${time.toLocaleString()} (${duration(ago)} ago)`;
}

/**
 * A DOM element: h('tr.row', { dataset: { id } , onclick }, child, 'text', ...). Children may
 * be nodes, strings, numbers, arrays, or null (skipped).
 */
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split('.');
  const element = document.createElement(name || 'div');
  if (classes.length) element.className = classes.join(' ');
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else if (key in element && key !== 'list') element[key] = value;
    else element.setAttribute(key, value === true ? '' : value);
  }
  const add = (child) => {
    if (child == null || child === false) return;
    if (Array.isArray(child)) child.forEach(add);
    else element.append(child instanceof Node ? child : String(child));
  };
  children.forEach(add);
  return element;
}

/**
 * Sizes `canvas` to its CSS box in device pixels and clears it: { g, width, height, ratio }.
 */
export function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, width, height);
  return { g, width, height, ratio };
}

/** Draws `values` as a line in `canvas`, scaled to its range. */
export function sparkline(canvas, values, color = '#4fb3ff') {
  const { g, width, height, ratio } = fitCanvas(canvas);
  if (values.length < 2) return;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min || 1;
  const pad = 2 * ratio;
  const x = (i) => pad + (i * (width - 2 * pad)) / (values.length - 1);
  const y = (v) => height - pad - ((v - min) / span) * (height - 2 * pad);
  g.beginPath();
  values.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.strokeStyle = color;
  g.lineWidth = 1.5 * ratio;
  g.lineJoin = 'round';
  g.stroke();
}
