// The broker console: an overview (live charts from $SYS/# and counts from the admin API), the
// topic tree, and the clients, subscriptions and retained pages (admin API). One MQTT
// connection over the page's own origin feeds the charts and the tree; the same credentials,
// when the broker asks for some, serve MQTT and the API.
import { createClient } from '../rallymq.js';
import { api, credentials, deleteRetained, onDenied } from './api.js';
import { duration, fitCanvas, h, number } from './format.js';
import { ClientsPage, RetainedPage, SubscriptionsPage } from './tables.js';
import { TopicDetail, TopicTree, TreeView } from './topics.js';

const params = new URLSearchParams(location.search);
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const brokerUrl = params.get('broker') || `${scheme}://${location.host}/mqtt`;
const HISTORY = 90; // samples kept per plot
const BROKER_POLL_MS = 5000;
const decoder = new TextDecoder();
const $ = (id) => document.getElementById(id);

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text || state;
}

// ---------------------------------------------------------------------------------- plots

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
    if (!canvas.clientWidth) return; // on a hidden page
    const { g, width, height, ratio } = fitCanvas(canvas);
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
    g.fillText(number(max), pad, pad + 10 * ratio);
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

const plots = {
  clients: new Plot($('plot-clients'), '#4fb3ff'),
  in: new Plot($('plot-in'), '#5fd38d'),
  out: new Plot($('plot-out'), '#f2b84b'),
  dropped: new Plot($('plot-dropped'), '#ef6f6c'),
  queued: new Plot($('plot-queued'), '#b48ef0'),
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
    this.label.textContent = number(perSecond);
  }
}

const rates = {
  in: new Rate(plots.in, $('rate-in')),
  out: new Rate(plots.out, $('rate-out')),
  dropped: new Rate(plots.dropped, $('rate-dropped')),
};
let uptime = null; // [seconds, at ms]

const sysHandlers = {
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
  '$SYS/broker/publish/messages/dropped': (text) => rates.dropped.counter(Number(text), brokerTime()),
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

/** Counts the admin API has and $SYS has not: queued messages, sessions, listeners, limits. */
async function pollBroker() {
  try {
    const info = await api('broker');
    plots.queued.push(info.counts.queued_messages);
    $('queued').textContent = number(info.counts.queued_messages);
    $('sessions').textContent = number(info.counts.sessions);
    if ($('version').textContent === '–') $('version').textContent = info.version;
    if (!uptime) uptime = [info.uptime, Date.now()];
    const limits = Object.entries(info.limits).map(([name, value]) => [name.replace(/_/g, ' '), value ?? 'none']);
    $('broker-details').replaceChildren(h('dl.kv', null,
      info.listeners.map((l) => [h('dt', null, `listener (${l.type})`), h('dd', null, l.url)]),
      h('dt', null, 'storage'), h('dd', null, info.storage),
      limits.map(([name, value]) => [h('dt', null, name), h('dd', null, String(value))])));
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) console.warn('console: /api/v1/broker:', error);
  }
}

/** The cluster's nodes (`/api/v1/cluster`), shown only on a cluster node. */
async function pollCluster() {
  try {
    const cluster = await api('cluster');
    $('cluster').hidden = cluster.node_id == null;
    if (cluster.node_id == null) return;
    $('cluster-summary').textContent = `${cluster.live_nodes} of ${cluster.nodes.length} nodes live · this node ${cluster.node_id}`;
    const cell = (label, value) => h('td', { dataset: { label } }, value);
    $('cluster-table').replaceChildren(h('table', null,
      h('thead', null, h('tr', null, ['Node', 'State', 'Address', 'Clients', 'In / min', 'Out / min', 'Up since'].map((name) => h('th', null, name)))),
      h('tbody', null, cluster.nodes.map((node) => h('tr', { dataset: { node: node.id, live: String(node.live) } },
        cell('Node', node.this_node ? `${node.id} (this node)` : node.id),
        cell('State', node.live ? 'live' : `silent ${duration(node.silent_secs)}`),
        cell('Address', node.address ?? '–'),
        cell('Clients', number(node.clients)),
        cell('In / min', number(node.messages_received_per_min)),
        cell('Out / min', number(node.messages_sent_per_min)),
        cell('Up since', new Date(node.started_at).toLocaleString()))))));
  } catch (error) {
    if (error.status !== 401 && error.status !== 403) console.warn('console: /api/v1/cluster:', error);
  }
}

// ---------------------------------------------------------------------------- topic tree

const tree = new TopicTree();
const detail = new TopicDetail($('topic-detail'), {
  onDeleteRetained: async (node) => {
    if (!confirm(`Delete the retained message of ${node.topic}?`)) return;
    try {
      await deleteRetained(node.topic);
      node.retain = false;
      detail.refresh();
      view.changed(null);
    } catch (error) {
      alert(error.message);
    }
  },
});
const view = new TreeView($('tree'), tree, {
  onSelect: (node) => detail.show(node),
  onRender: () => {
    detail.update();
    $('topic-counts').textContent = `${number(tree.topics)} topics`;
  },
});
let treeWanted = false; // subscribe to # once the topics page has been opened
$('topic-search').addEventListener('input', (event) => view.setFilter(event.target.value));

function onMessage(topic, payload, packet) {
  if (topic.startsWith('$SYS/')) {
    const handler = sysHandlers[topic];
    if (handler) handler(decoder.decode(payload).trim());
  }
  const { created } = tree.add(topic, payload, Boolean(packet.retain), packet.qos, Date.now());
  view.changed(created);
}

// ---------------------------------------------------------------------------- connection

let client = null;

function connect() {
  client?.end();
  const signedIn = credentials.get();
  // createClient connects in the background and keeps trying: the page works when it is
  // opened before the broker starts, and after the broker restarts.
  client = createClient(brokerUrl, {
    clientId: `console-${Math.random().toString(16).slice(2, 10)}`,
    protocolVersion: 5,
    keepalive: 30,
    clean: true,
    reconnect: true,
    // Room for a burst of retained messages on subscribing to #.
    queueLimit: 10_000,
    username: signedIn?.user,
    password: signedIn?.password,
  });
  window.rallymqClient = client;
  client.on('message', onMessage);
  client.on('connect', () => setStatus('connected'));
  client.on('reconnect', () => setStatus('reconnecting', 'reconnecting…'));
  client.on('offline', () => setStatus('offline'));
  client.on('close', () => client.connected || setStatus('offline'));
  client.on('error', (error) => {
    // 0x86 Bad user name or password, 0x87 Not authorized.
    if (error && (error.code === 0x86 || error.code === 0x87)) {
      setStatus('error', 'sign-in needed');
      askForCredentials(signedIn ? 'The broker refused this user name and password.' : 'The broker asks for a user name and password.');
    } else console.warn('console:', error);
  });
  const subscriptions = [{ filter: '$SYS/#', qos: 0 }];
  if (treeWanted) subscriptions.push({ filter: '#', qos: 0, rap: true });
  return client.subscribe(subscriptions).then(() => {
    setStatus('connected');
    document.body.dataset.subscribed = 'true'; // the browser tests wait for this
    if (treeWanted) document.body.dataset.treeSubscribed = 'true';
  });
}

function watchTopics() {
  if (treeWanted) return;
  treeWanted = true;
  client.subscribe({ filter: '#', qos: 0, rap: true }).then(
    () => (document.body.dataset.treeSubscribed = 'true'),
    (error) => console.warn('console: subscribing to #:', error),
  );
}

// --------------------------------------------------------------------------------- login

const login = $('login');
let asking = false;
let dismissed = false; // the dialog was closed without signing in: not asked again unprompted

function askForCredentials(reason, prompted = false) {
  if (asking || (dismissed && !prompted)) return;
  asking = true;
  $('login-reason').textContent = reason;
  const form = $('login-form');
  const signedIn = credentials.get();
  form.user.value = signedIn?.user || '';
  form.password.value = '';
  login.showModal();
}

login.addEventListener('close', () => {
  asking = false;
  dismissed = login.returnValue !== 'ok';
  if (dismissed) return;
  const form = $('login-form');
  credentials.set(form.user.value, form.password.value);
  route();
  // Again once the new MQTT connection is up: the lists then hold the console's own client.
  connect().then(route, (error) => console.warn('console:', error));
});

onDenied((error) => askForCredentials(error.status === 401 ? 'The admin API asks for a user name and password.' : error.message));

// ---------------------------------------------------------------------------------- pages

const pages = {
  clients: new ClientsPage({ form: $('client-search'), table: $('clients-table'), detail: $('client-detail') }),
  subscriptions: new SubscriptionsPage({ form: $('subscription-search'), table: $('subscriptions-table') }),
  retained: new RetainedPage({
    form: $('retained-search'),
    table: $('retained-table'),
    onDeleted: (topic) => {
      const node = tree.find(topic);
      if (!node) return;
      node.retain = false;
      if (detail.node === node) detail.refresh();
      view.changed(null);
    },
  }),
};

function route() {
  const name = location.hash.slice(1) || 'overview';
  const page = document.querySelector(`.page[data-page="${name}"]`) ? name : 'overview';
  for (const section of document.querySelectorAll('.page')) section.hidden = section.dataset.page !== page;
  for (const tab of document.querySelectorAll('.tabs a')) {
    if (tab.dataset.page === page) tab.setAttribute('aria-current', 'page');
    else tab.removeAttribute('aria-current');
  }
  document.body.dataset.page = page;
  if (page === 'overview') {
    Object.values(plots).forEach((plot) => plot.draw());
  } else if (page === 'topics') {
    watchTopics();
    view.schedule();
  } else {
    pages[page].refresh();
  }
}

window.addEventListener('hashchange', route);
// Always, so that the queued-messages chart has its history whatever page is open.
setInterval(pollBroker, BROKER_POLL_MS);
pollBroker();
setInterval(pollCluster, BROKER_POLL_MS);
pollCluster();

// For the browser tests: the tree's model and view.
window.rallymqConsole = { tree, view, pages };

connect().catch((error) => {
  setStatus('error', `${brokerUrl}: ${(error && error.message) || error}`);
  console.error(error);
});
route();
