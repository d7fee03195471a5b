// Broker dashboard: clients, message rates, uptime and version, from $SYS/# (Mosquitto's
// topic names) over the page's own MQTT connection. The plots are plain canvas.
import { createClient } from '../rallymq.js';

const params = new URLSearchParams(location.search);
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const brokerUrl = params.get('broker') || `${scheme}://${location.host}/mqtt`;
const HISTORY = 90; // samples kept per plot
const decoder = new TextDecoder();
const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text || state;
}

class Plot {
  constructor(figure, color) {
    this.canvas = figure.querySelector('canvas');
    this.color = color;
    this.samples = []; // [time ms, value]
  }

  push(value, time = Date.now()) {
    if (!Number.isFinite(value)) return;
    this.samples.push([time, value]);
    if (this.samples.length > HISTORY) this.samples.shift();
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const g = canvas.getContext('2d');
    g.clearRect(0, 0, width, height);
    const pad = 4 * ratio;
    const max = Math.max(1, ...this.samples.map(([, v]) => v)) * 1.1;
    // Grid: four horizontal lines, labelled with the scale.
    g.strokeStyle = 'rgba(154, 167, 180, .18)';
    g.fillStyle = 'rgba(154, 167, 180, .8)';
    g.lineWidth = 1;
    g.font = `${10 * ratio}px system-ui, sans-serif`;
    for (let i = 0; i <= 4; i++) {
      const y = pad + ((height - 2 * pad) * i) / 4;
      g.beginPath();
      g.moveTo(0, y);
      g.lineTo(width, y);
      g.stroke();
    }
    g.fillText(format(max), pad, pad + 10 * ratio);
    if (this.samples.length === 0) return;
    // Time runs right to left from now; the span is the last HISTORY samples or one minute.
    const now = Date.now();
    const first = this.samples[0][0];
    const span = Math.max(60_000, now - first);
    const x = (t) => width - pad - ((now - t) / span) * (width - 2 * pad);
    const y = (v) => height - pad - (v / max) * (height - 2 * pad);
    g.beginPath();
    this.samples.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.lineTo(width - pad, y(this.samples[this.samples.length - 1][1]));
    g.strokeStyle = this.color;
    g.lineWidth = 2 * ratio;
    g.lineJoin = 'round';
    g.stroke();
    g.lineTo(width - pad, height - pad);
    g.lineTo(x(first), height - pad);
    g.closePath();
    g.globalAlpha = 0.15;
    g.fillStyle = this.color;
    g.fill();
    g.globalAlpha = 1;
  }
}

function format(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e4) return `${(value / 1e3).toFixed(1)}k`;
  return value >= 100 || Number.isInteger(value) ? String(Math.round(value)) : value.toFixed(1);
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400);
  const h = Math.floor((seconds % 86400) / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return [d && `${d}d`, (d || h) && `${h}h`, (d || h || m) && `${m}m`, `${s}s`]
    .filter(Boolean)
    .join(' ');
}

const plots = {
  clients: new Plot($('plot-clients'), '#4fb3ff'),
  in: new Plot($('plot-in'), '#5fd38d'),
  out: new Plot($('plot-out'), '#f2b84b'),
};

// A rate from a monotonically increasing counter: (difference) / (time between two samples).
class Rate {
  constructor(plot, label) {
    this.plot = plot;
    this.label = label;
    this.last = null; // [time ms, count]
  }

  // `brokerTime`: the broker's uptime in ms when it published `count` (it publishes the
  // uptime just before the counters of the same round), so that a retained sample from
  // seconds ago does not skew the first rate.
  counter(count, brokerTime) {
    if (this.last && count >= this.last[1] && brokerTime > this.last[0]) {
      this.show(((count - this.last[1]) * 1000) / (brokerTime - this.last[0]));
    }
    this.last = [brokerTime, count];
  }

  // `perMinute`: the broker's own 1-minute average, shown until two counter samples exist.
  load(perMinute) {
    if (this.plot.samples.length === 0) this.show(perMinute / 60);
  }

  show(perSecond) {
    this.plot.push(perSecond);
    this.label.textContent = format(perSecond);
  }
}

const rates = { in: new Rate(plots.in, $('rate-in')), out: new Rate(plots.out, $('rate-out')) };
let uptime = null; // [seconds, at ms]

const handlers = {
  '$SYS/broker/version': (text) => ($('version').textContent = text.replace(/^rallymq version /, '')),
  '$SYS/broker/uptime': (text) => {
    uptime = [parseFloat(text), Date.now()];
    showUptime();
  },
  '$SYS/broker/clients/connected': (text) => {
    plots.clients.push(Number(text));
    $('clients').textContent = text;
  },
  '$SYS/broker/messages/received': (text) => rates.in.counter(Number(text), brokerTime()),
  '$SYS/broker/messages/sent': (text) => rates.out.counter(Number(text), brokerTime()),
  '$SYS/broker/load/messages/received/1min': (text) => rates.in.load(Number(text)),
  '$SYS/broker/load/messages/sent/1min': (text) => rates.out.load(Number(text)),
  '$SYS/broker/subscriptions/count': (text) => ($('subscriptions').textContent = text),
  '$SYS/broker/retained messages/count': (text) => ($('retained').textContent = text),
};

// The broker's clock in ms: its last published uptime, or ours when it publishes none.
function brokerTime() {
  return uptime && Number.isFinite(uptime[0]) ? uptime[0] * 1000 : Date.now();
}

function showUptime() {
  if (!uptime || !Number.isFinite(uptime[0])) return;
  $('uptime').textContent = duration(uptime[0] + (Date.now() - uptime[1]) / 1000);
}

// The plots move between samples, and the uptime ticks.
setInterval(() => {
  showUptime();
  Object.values(plots).forEach((plot) => plot.draw());
}, 1000);
window.addEventListener('resize', () => Object.values(plots).forEach((plot) => plot.draw()));

async function start() {
  // createClient connects in the background and keeps trying: the page works when it is
  // opened before the broker starts, and after the broker restarts.
  const client = createClient(brokerUrl, {
    clientId: `dashboard-${Math.random().toString(16).slice(2, 10)}`,
    protocolVersion: 5,
    keepalive: 30,
    clean: true,
    reconnect: true,
  });
  window.rallymqClient = client;
  client.on('message', (topic, payload) => {
    const handler = handlers[topic];
    if (handler) handler(decoder.decode(payload).trim());
  });
  client.on('connect', () => setStatus('connected'));
  client.on('reconnect', () => setStatus('reconnecting', 'reconnecting…'));
  client.on('offline', () => setStatus('offline'));
  client.on('close', () => setStatus('offline'));
  client.on('error', (error) => console.warn('dashboard:', error));
  await client.subscribe('$SYS/#', { qos: 0 });
  setStatus('connected');
  document.body.dataset.subscribed = 'true'; // the browser tests wait for this
}

start().catch((error) => {
  setStatus('error', `${brokerUrl}: ${error && error.message || error}`);
  console.error(error);
});
