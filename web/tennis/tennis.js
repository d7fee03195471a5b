// Live tennis scoreboard: one card per match, from the retained JSON messages on
// tennis/{match_id}/score (see examples/tennis.rs for the simulator that publishes them).
import { createClient } from '../rallymq.js';

const params = new URLSearchParams(location.search);
const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
const brokerUrl = params.get('broker') || `${scheme}://${location.host}/mqtt`;

const matches = document.getElementById('matches');
const empty = document.getElementById('empty');
const status = document.getElementById('status');
const decoder = new TextDecoder();

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text || state;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function card(id) {
  let node = matches.querySelector(`[data-match-id="${CSS.escape(id)}"]`);
  if (node) return node;
  node = el('article', 'match');
  node.dataset.matchId = id;
  const head = el('div', 'match-head');
  head.append(el('span', 'court', id), el('span', 'state'));
  node.append(head);
  for (const index of [0, 1]) {
    const row = el('div', 'player');
    row.dataset.player = String(index);
    row.append(el('span', 'serve'), el('span', 'name'), el('span', 'sets'), el('span', 'points'));
    node.append(row);
  }
  // Keep the cards in match id order.
  const after = [...matches.children].find((other) => other.dataset.matchId > id);
  matches.insertBefore(node, after || null);
  return node;
}

function render(id, score) {
  const node = card(id);
  const finished = score.status === 'finished';
  node.dataset.status = finished ? 'finished' : 'live';
  node.querySelector('.state').textContent = finished ? 'Final' : 'Live';
  const sets = Array.isArray(score.sets) ? score.sets : [];
  const rows = node.querySelectorAll('.player');
  rows.forEach((row, index) => {
    const name = (score.players && score.players[index]) || `Player ${index + 1}`;
    row.querySelector('.name').textContent = name;
    row.classList.toggle('serving', !finished && score.serving === index);
    row.classList.toggle('winner', score.winner === index);
    const cells = row.querySelector('.sets');
    cells.replaceChildren(...sets.map((games, set) => {
      const mine = Number(games[index]);
      const theirs = Number(games[1 - index]);
      const current = !finished && set === sets.length - 1;
      const done = !current && (finished || set < sets.length - 1);
      const cell = el('span', 'set', String(mine));
      cell.classList.toggle('current', current);
      cell.classList.toggle('won', done && mine > theirs);
      return cell;
    }));
    const points = (score.points && score.points[index]) ?? '';
    row.querySelector('.points').textContent = String(points);
  });
  node.setAttribute('aria-label', `${rows[0].querySelector('.name').textContent} vs ${rows[1].querySelector('.name').textContent}`);
  node.classList.remove('flash');
  void node.offsetWidth; // restart the animation
  node.classList.add('flash');
  empty.hidden = true;
}

function remove(id) {
  const node = matches.querySelector(`[data-match-id="${CSS.escape(id)}"]`);
  if (node) node.remove();
  empty.hidden = matches.children.length > 0;
}

function onMessage(topic, payload) {
  const parts = topic.split('/');
  if (parts.length !== 3 || parts[0] !== 'tennis' || parts[2] !== 'score') return;
  const id = parts[1];
  if (payload.length === 0) return remove(id); // a cleared retained message: the match is gone
  let score;
  try {
    score = JSON.parse(decoder.decode(payload));
  } catch (error) {
    console.warn(`tennis: bad score on ${topic}`, error);
    return;
  }
  render(id, score);
}

async function start() {
  setStatus('connecting', 'connecting…');
  // createClient connects in the background and keeps trying: the page works when it is
  // opened before the broker starts, and after the broker restarts.
  const client = createClient(brokerUrl, {
    clientId: `tennis-${Math.random().toString(16).slice(2, 10)}`,
    protocolVersion: 5,
    keepalive: 30,
    clean: true,
    reconnect: true,
  });
  window.rallymqClient = client; // for the console and the browser tests
  client.on('message', onMessage);
  client.on('connect', () => setStatus('connected'));
  client.on('reconnect', () => setStatus('reconnecting', 'reconnecting…'));
  client.on('offline', () => setStatus('offline'));
  client.on('close', () => setStatus('offline'));
  client.on('error', (error) => console.warn('tennis:', error));
  await client.subscribe('tennis/+/score', { qos: 1 });
  setStatus('connected');
  document.body.dataset.subscribed = 'true'; // the browser tests wait for this
}

start().catch((error) => {
  setStatus('error', `${brokerUrl}: ${error && error.message || error}`);
  console.error(error);
});
