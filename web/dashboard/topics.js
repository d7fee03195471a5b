// The topic tree: every topic seen on `#` (and `$SYS/#`), as a collapsible tree like MQTT
// Explorer's, with message rates, the last payload and a sparkline of numeric payloads.
//
// Built to stay fast with 100,000 topics and more: the model is a tree of Maps updated in O(depth)
// per message; the view is virtual (only the rows in the viewport exist in the DOM, from the
// flat list of expanded nodes, rebuilt only when the expanded part of the tree changes); and
// the DOM is updated at most once per animation frame, however many messages arrive.

import { describePayload, h, number, previewPayload, sparkline } from './format.js';

/** Seconds over which message rates are averaged (exponentially weighted). */
const RATE_WINDOW = 10;
/** Numeric values kept per topic for its sparkline. */
const HISTORY = 60;
/** Height of one row in px (the CSS's `.row` height). */
export const ROW_HEIGHT = 28;
/** Rows rendered above and below the viewport. */
const OVERSCAN = 8;

const collator = new Intl.Collator(undefined, { numeric: true });

/** One level of a topic: the topic itself if a message came on it, and its children. */
export class TopicNode {
  constructor(name, parent) {
    this.name = name;
    this.parent = parent;
    this.depth = parent ? parent.depth + 1 : -1;
    this.children = null; // Map name -> TopicNode
    this.sorted = null; // the children sorted by name, until one is added
    this.expanded = false;
    // The last message on this very topic.
    this.payload = null;
    this.retain = false;
    this.qos = 0;
    this.at = 0;
    this.count = 0;
    this.history = null;
    // Over the subtree, this node included.
    this.topics = 0;
    this.messages = 0;
    this.rate = 0; // exponentially weighted messages per second, as of rateAt
    this.rateAt = 0;
  }

  get topic() {
    const names = [];
    for (let node = this; node.parent; node = node.parent) names.push(node.name);
    return names.reverse().join('/');
  }

  get hasChildren() {
    return this.children !== null && this.children.size > 0;
  }

  /** Messages per second over about the last RATE_WINDOW seconds. */
  rateAtTime(now) {
    return this.rate * Math.exp(-(now - this.rateAt) / 1000 / RATE_WINDOW);
  }

  child(name) {
    let child = this.children?.get(name);
    if (!child) {
      child = new TopicNode(name, this);
      (this.children ||= new Map()).set(name, child);
      this.sorted = null;
    }
    return child;
  }

  sortedChildren() {
    if (!this.children) return [];
    return (this.sorted ||= [...this.children.values()].sort((a, b) => collator.compare(a.name, b.name)));
  }

  /** Whether every ancestor is expanded (the node has a row). */
  get shown() {
    for (let node = this.parent; node; node = node.parent) if (!node.expanded) return false;
    return true;
  }
}

/** The model: a tree of topics. */
export class TopicTree {
  constructor() {
    this.root = new TopicNode('', null);
    this.root.expanded = true;
    this.topics = 0;
  }

  /**
   * Records a message; returns { node, created } where `created` is the highest node that did
   * not exist before (its appearance changes the rows), if any.
   */
  add(topic, payload, retain, qos, now) {
    let node = this.root;
    let created = null;
    for (const name of topic.split('/')) {
      const had = node.children?.has(name);
      node = node.child(name);
      if (!had && !created) created = node;
    }
    const first = node.count === 0;
    node.payload = payload;
    node.retain = retain;
    node.qos = qos;
    node.at = now;
    node.count += 1;
    const { number: value } = describeNumber(payload);
    if (value !== null) {
      (node.history ||= []).push(value);
      if (node.history.length > HISTORY) node.history.shift();
    }
    if (first) this.topics += 1;
    // The retained message a topic shows first is history (sent on subscribe), not traffic;
    // later retained ones are live publishes (the console subscribes with Retain As
    // Published, so that the flag shows which topics keep their last message).
    const live = !(retain && first);
    for (let up = node; up; up = up.parent) {
      if (first) up.topics += 1;
      up.messages += 1;
      if (live) {
        up.rate = up.rateAtTime(now) + 1 / RATE_WINDOW;
        up.rateAt = now;
      }
    }
    return { node, created };
  }

  /** The node of `topic`, if it exists. */
  find(topic) {
    let node = this.root;
    for (const name of topic.split('/')) {
      node = node.children?.get(name);
      if (!node) return null;
    }
    return node;
  }
}

/** A payload's numeric value, without decoding big payloads (numbers are short). */
function describeNumber(payload) {
  if (payload.length === 0 || payload.length > 64) return { number: null };
  return describePayload(payload);
}

/** The virtual list of the tree's expanded part. */
export class TreeView {
  constructor(container, tree, { onSelect, onRender } = {}) {
    this.container = container;
    this.tree = tree;
    this.onSelect = onSelect || (() => {});
    this.onRender = onRender || (() => {});
    this.rows = []; // the nodes that have a row, in order
    this.rowsDirty = true;
    this.contentDirty = true;
    this.scheduled = false;
    this.selected = null;
    this.filter = '';
    this.pool = [];
    this.sizer = h('div.tree-sizer');
    container.append(this.sizer);
    container.addEventListener('scroll', () => this.schedule());
    container.addEventListener('click', (event) => this.click(event));
    container.addEventListener('keydown', (event) => this.key(event));
    new ResizeObserver(() => this.schedule()).observe(container);
  }

  /** A node changed (`created`: one appeared): the view catches up at the next frame. */
  changed(created) {
    if (created && (this.filter || created.shown)) this.rowsDirty = true;
    this.contentDirty = true;
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  setFilter(text) {
    this.filter = text.trim().toLowerCase();
    this.container.scrollTop = 0; // the matches from the top
    this.rowsDirty = true;
    this.schedule();
  }

  toggle(node, expanded = !node.expanded) {
    if (!node.hasChildren || node.expanded === expanded) return;
    node.expanded = expanded;
    this.rowsDirty = true;
    this.schedule();
  }

  select(node) {
    this.selected = node;
    this.contentDirty = true;
    this.schedule();
    this.onSelect(node);
    const index = this.rows.indexOf(node);
    if (index >= 0) {
      const top = index * ROW_HEIGHT;
      const view = this.container;
      if (top < view.scrollTop) view.scrollTop = top;
      else if (top + ROW_HEIGHT > view.scrollTop + view.clientHeight) view.scrollTop = top + ROW_HEIGHT - view.clientHeight;
    }
  }

  /** The rows: depth-first over expanded nodes; with a filter, every node on a path to a match. */
  flatten() {
    const rows = [];
    const filter = this.filter;
    if (!filter) {
      const walk = (node) => {
        for (const child of node.sortedChildren()) {
          rows.push(child);
          if (child.expanded) walk(child);
        }
      };
      walk(this.tree.root);
    } else {
      // Whether `node` or a descendant matches; pushes the rows of those that do.
      const walk = (node, path) => {
        let any = false;
        for (const child of node.sortedChildren()) {
          const childPath = path ? `${path}/${child.name}` : child.name;
          const at = rows.length;
          rows.push(child);
          const below = walk(child, childPath);
          if (below || childPath.toLowerCase().includes(filter)) any = true;
          else rows.length = at;
        }
        return any;
      };
      walk(this.tree.root, '');
    }
    this.rows = rows;
    this.rowsDirty = false;
    this.sizer.style.height = `${rows.length * ROW_HEIGHT}px`;
  }

  render() {
    const started = performance.now();
    if (this.rowsDirty) this.flatten();
    const view = this.container;
    // When the list has just shrunk, the browser clamps scrollTop only at its next layout:
    // the rows are placed from the clamped value now, or the viewport would stay empty.
    const top = Math.min(view.scrollTop, Math.max(0, this.rows.length * ROW_HEIGHT - view.clientHeight));
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + view.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    const needed = last - first;
    while (this.pool.length < needed) {
      const row = h('div.row', { role: 'treeitem' },
        h('span.caret', { 'aria-hidden': 'true' }),
        h('span.name'),
        h('span.badge', { title: 'retained' }, 'R'),
        h('span.meta'),
        h('span.preview'),
        h('span.rate'));
      this.pool.push(row);
      view.append(row);
    }
    const now = Date.now();
    for (let i = 0; i < this.pool.length; i++) {
      const row = this.pool[i];
      const node = i < needed ? this.rows[first + i] : null;
      if (!node) {
        row.hidden = true;
        row.node = null;
        continue;
      }
      row.hidden = false;
      row.node = node;
      this.fill(row, node, first + i, now);
    }
    this.contentDirty = false;
    this.onRender();
    this.lastRender = performance.now() - started;
  }

  fill(row, node, index, now) {
    row.style.transform = `translateY(${index * ROW_HEIGHT}px)`;
    row.style.paddingLeft = `${0.4 + node.depth * 1.1}rem`;
    row.dataset.topic = node.topic;
    row.setAttribute('aria-level', node.depth + 1);
    row.classList.toggle('selected', node === this.selected);
    const [caret, name, badge, meta, preview, rate] = row.children;
    if (node.hasChildren) {
      row.setAttribute('aria-expanded', String(node.expanded || Boolean(this.filter)));
      caret.textContent = node.expanded || this.filter ? '▾' : '▸';
    } else {
      row.removeAttribute('aria-expanded');
      caret.textContent = '';
    }
    name.textContent = node.name === '' ? '(empty)' : node.name;
    badge.hidden = !(node.count && node.retain);
    meta.textContent = node.hasChildren ? `${number(node.topics)} topics · ${number(node.messages)} msgs` : '';
    preview.textContent = node.payload ? previewPayload(node.payload, 60) : '';
    const perSecond = node.rateAtTime(now);
    rate.textContent = perSecond >= 0.05 ? `${number(perSecond)}/s` : '';
  }

  click(event) {
    const row = event.target.closest('.row');
    if (!row || !row.node) return;
    const node = row.node;
    if (event.target.classList.contains('caret') || (node.hasChildren && node === this.selected)) this.toggle(node);
    this.select(node);
  }

  key(event) {
    const index = this.rows.indexOf(this.selected);
    const move = (to) => {
      const node = this.rows[Math.max(0, Math.min(this.rows.length - 1, to))];
      if (node) this.select(node);
      event.preventDefault();
    };
    switch (event.key) {
      case 'ArrowDown':
        return move(index + 1);
      case 'ArrowUp':
        return move(index - 1);
      case 'ArrowRight':
        if (this.selected?.hasChildren) this.toggle(this.selected, true);
        return event.preventDefault();
      case 'ArrowLeft':
        if (this.selected?.expanded) this.toggle(this.selected, false);
        else if (this.selected?.parent?.parent) this.select(this.selected.parent);
        return event.preventDefault();
      case 'Enter':
      case ' ':
        if (this.selected) this.toggle(this.selected);
        return event.preventDefault();
      default:
    }
  }
}

/** The detail pane: the selected topic's last message, counts and sparkline. */
export class TopicDetail {
  constructor(container, { onDeleteRetained } = {}) {
    this.container = container;
    this.onDeleteRetained = onDeleteRetained;
    this.node = null;
    this.shownAt = -1;
  }

  show(node) {
    this.node = node;
    this.refresh();
  }

  /** Redraws now (the node changed other than by a message: its retained message deleted). */
  refresh() {
    this.shownAt = -1;
    this.update();
  }

  /** Redraws if the node has a newer message (called once per frame at most). */
  update() {
    const node = this.node;
    if (!node || node.at === this.shownAt) return;
    this.shownAt = node.at;
    const payload = node.payload ? describePayload(node.payload) : null;
    const canvas = node.history && node.history.length > 1 ? h('canvas.spark', { 'aria-label': `history of ${node.topic}` }) : null;
    // Through h(), which leaves out null children (replaceChildren would write "null").
    this.container.replaceChildren(h('div', null,
      h('h2.topic-name', null, node.topic || '(root)'),
      h('dl.kv', null,
        node.count ? [
          h('dt', null, 'Last message'), h('dd', null, new Date(node.at).toLocaleTimeString()),
          h('dt', null, 'QoS'), h('dd', null, node.qos),
          h('dt', null, 'Retained'), h('dd.retained-flag', null, node.retain ? 'yes' : 'no'),
          h('dt', null, 'Messages'), h('dd', null, number(node.count)),
          h('dt', null, 'Size'), h('dd', null, `${node.payload.length} bytes`),
        ] : null,
        node.hasChildren ? [
          h('dt', null, 'Topics below'), h('dd', null, number(node.topics - (node.count ? 1 : 0))),
          h('dt', null, 'Messages below'), h('dd', null, number(node.messages - node.count)),
        ] : null,
        h('dt', null, 'Rate'), h('dd', null, `${number(node.rateAtTime(Date.now()))}/s`)),
      canvas,
      payload ? h(`pre.payload.payload-${payload.kind}`, { dataset: { kind: payload.kind } }, payload.text || '(empty)') : null,
      node.retain && this.onDeleteRetained
        ? h('button.danger', { type: 'button', onclick: () => this.onDeleteRetained(node) }, 'Delete retained message')
        : null,
    ));
    if (canvas) sparkline(canvas, node.history);
  }
}
