// The clients, subscriptions and retained pages: paged lists from the admin API, with search,
// a client's details and its disconnect buttons, and deletion of retained messages.

import { api, deleteRetained, segment } from './api.js';
import { bytesText, describePayload, fromBase64, h, previewPayload, when } from './format.js';

const PAGE_SIZE = 50;

/**
 * A paged table. `columns`: [{ label, value(item) -> string | Node }]. On a narrow screen the
 * CSS lays each row out as a card, labelled from `data-label`.
 */
class Listing {
  constructor(container, { columns, load, onRow, key }) {
    this.container = container;
    this.columns = columns;
    this.load = load;
    this.onRow = onRow;
    this.key = key;
    this.page = 1;
    this.query = {};
  }

  async search(query) {
    this.query = query;
    await this.show(1);
  }

  async show(page = this.page) {
    this.container.setAttribute('aria-busy', 'true');
    try {
      const result = await this.load({ ...this.query, page, limit: PAGE_SIZE });
      this.page = page;
      this.render(result);
    } catch (error) {
      this.container.replaceChildren(h('p.error', { role: 'alert' }, error.message));
    } finally {
      this.container.removeAttribute('aria-busy');
    }
  }

  render({ data, meta }) {
    const pages = Math.max(1, Math.ceil(meta.count / meta.limit));
    const table = h('table', null,
      h('thead', null, h('tr', null, this.columns.map((column) => h('th', { scope: 'col' }, column.label)))),
      h('tbody', null, data.map((item) => {
        const row = h('tr', { dataset: { key: this.key(item) } },
          this.columns.map((column) => h('td', { dataset: { label: column.label } }, column.value(item))));
        if (this.onRow) {
          row.classList.add('clickable');
          row.tabIndex = 0;
          row.addEventListener('click', (event) => event.target.closest('button') || this.onRow(item));
          row.addEventListener('keydown', (event) => event.key === 'Enter' && this.onRow(item));
        }
        return row;
      })));
    this.container.replaceChildren(
      data.length ? table : h('p.muted.empty', null, 'Nothing found.'),
      h('div.pager', null,
        h('button', { type: 'button', disabled: meta.page <= 1, onclick: () => this.show(meta.page - 1) }, '‹ Previous'),
        h('span.count', null, `${meta.count} in all · page ${meta.page} of ${pages}`),
        h('button', { type: 'button', disabled: !meta.hasnext, onclick: () => this.show(meta.page + 1) }, 'Next ›')),
    );
  }
}

/** The values of a search form's fields, by name. */
function formQuery(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function bindSearch(form, listing) {
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    listing.search(formQuery(form));
  });
}

const state = (client) => h(`span.state.${client.connected ? 'on' : 'off'}`, null, client.connected ? 'connected' : 'offline');
const protocol = (client) => (client.proto_ver ? `MQTT ${{ 3: '3.1', 4: '3.1.1', 5: '5' }[client.proto_ver]}` : '–');
const address = (client) => (client.ip_address ? `${client.ip_address}:${client.port}` : '–');
const flag = (on) => (on ? 'yes' : 'no');

export class ClientsPage {
  constructor({ form, table, detail }) {
    this.form = form;
    this.detail = detail;
    this.listing = new Listing(table, {
      key: (client) => client.clientid,
      onRow: (client) => this.open(client.clientid),
      load: (query) => api('clients', { query }),
      columns: [
        { label: 'Client id', value: (c) => h('span.id', null, c.clientid) },
        { label: 'State', value: state },
        { label: 'User', value: (c) => c.username ?? '–' },
        { label: 'Address', value: address },
        { label: 'Protocol', value: protocol },
        { label: 'Subscriptions', value: (c) => c.subscriptions_cnt },
        { label: 'In flight', value: (c) => c.inflight_cnt ?? '–' },
        { label: 'Queued', value: (c) => c.mqueue_len },
      ],
    });
    bindSearch(form, this.listing);
  }

  refresh() {
    return this.listing.show();
  }

  /** Shows a client's details; `gone`: what to say if it has no session (any more). */
  async open(id, gone) {
    this.detail.hidden = false;
    this.detail.dataset.clientid = id;
    let client;
    try {
      client = await api(`clients/${segment(id)}`);
    } catch (error) {
      this.detail.replaceChildren(gone && error.status === 404
        ? h('p.done', { role: 'status' }, gone)
        : h('p.error', { role: 'alert' }, error.message));
      return;
    }
    const disconnect = async (discard) => {
      const what = discard ? `Disconnect ${id} and discard its session?` : `Disconnect ${id}?`;
      if (!confirm(what)) return;
      try {
        await api(`clients/${segment(id)}`, { method: 'DELETE', query: { discard_session: discard || undefined } });
        await this.refresh();
        if (discard) {
          this.detail.replaceChildren(h('p.done', { role: 'status' }, `${id}: session discarded.`));
        } else {
          await this.open(id, `${id}: disconnected; its session ended with the connection.`);
        }
      } catch (error) {
        this.detail.append(h('p.error', { role: 'alert' }, error.message));
      }
    };
    this.detail.replaceChildren(
      h('div.detail-head', null,
        h('h2', null, client.clientid),
        h('button.close', { type: 'button', 'aria-label': 'Close', onclick: () => (this.detail.hidden = true) }, '×')),
      h('dl.kv', null,
        h('dt', null, 'State'), h('dd', null, state(client)),
        h('dt', null, 'User'), h('dd', null, client.username ?? '–'),
        h('dt', null, 'Address'), h('dd', null, address(client)),
        h('dt', null, 'Listener'), h('dd', null, client.listener ?? '–'),
        h('dt', null, 'Protocol'), h('dd', null, protocol(client)),
        h('dt', null, 'Connected'), h('dd', null, when(client.connected_at)),
        client.connected ? null : [h('dt', null, 'Disconnected'), h('dd', null, when(client.disconnected_at))],
        h('dt', null, 'Keep alive'), h('dd', null, client.keepalive == null ? '–' : `${client.keepalive} s`),
        h('dt', null, 'Clean start'), h('dd', null, client.clean_start == null ? '–' : flag(client.clean_start)),
        h('dt', null, 'Session expiry'), h('dd', null, client.expiry_interval == null ? '–' : client.expiry_interval === 4294967295 ? 'never' : `${client.expiry_interval} s`),
        client.expires_at ? [h('dt', null, 'Expires'), h('dd', null, new Date(client.expires_at).toLocaleString())] : null,
        h('dt', null, 'In flight'), h('dd.inflight', null, client.inflight_cnt ?? '–'),
        h('dt', null, 'Queued'), h('dd.queued', null, `${client.mqueue_len} (${bytesText(client.mqueue_bytes)})`)),
      h('div.actions', null,
        client.connected ? h('button.danger.disconnect', { type: 'button', onclick: () => disconnect(false) }, 'Disconnect') : null,
        h('button.danger.discard', { type: 'button', onclick: () => disconnect(true) },
          client.connected ? 'Disconnect and discard session' : 'Discard session')),
      h('h3', null, `Subscriptions (${client.subscriptions.length})`),
      client.subscriptions.length
        ? h('table.subscriptions', null,
          h('thead', null, h('tr', null, ['Filter', 'QoS', 'No Local', 'Retain As Published', 'Retain Handling', 'Identifier'].map((l) => h('th', null, l)))),
          h('tbody', null, client.subscriptions.map((s) => subscriptionRow(s, false))))
        : h('p.muted', null, 'None.'),
    );
  }
}

function subscriptionRow(s, withClient) {
  const cells = [
    withClient ? ['Client id', s.clientid] : null,
    ['Filter', h('code', null, s.topic)],
    ['QoS', s.qos],
    ['No Local', flag(s.nl)],
    ['Retain As Published', flag(s.rap)],
    ['Retain Handling', s.rh],
    ['Identifier', s.identifier ?? '–'],
  ].filter(Boolean);
  return h('tr', null, cells.map(([label, value]) => h('td', { dataset: { label } }, value)));
}

export class SubscriptionsPage {
  constructor({ form, table }) {
    this.listing = new Listing(table, {
      key: (s) => `${s.clientid}\u0000${s.topic}`,
      load: (query) => api('subscriptions', { query }),
      columns: [
        { label: 'Client id', value: (s) => h('span.id', null, s.clientid) },
        { label: 'Filter', value: (s) => h('code', null, s.topic) },
        { label: 'QoS', value: (s) => s.qos },
        { label: 'No Local', value: (s) => flag(s.nl) },
        { label: 'Retain As Published', value: (s) => flag(s.rap) },
        { label: 'Retain Handling', value: (s) => s.rh },
        { label: 'Identifier', value: (s) => s.identifier ?? '–' },
      ],
    });
    bindSearch(form, this.listing);
  }

  refresh() {
    return this.listing.show();
  }
}

/** A retained message's payload as bytes. */
const payloadBytes = (m) => (m.payload_encoding === 'base64' ? fromBase64(m.payload) : new TextEncoder().encode(m.payload));

export class RetainedPage {
  constructor({ form, table, onDeleted }) {
    this.onDeleted = onDeleted || (() => {});
    this.listing = new Listing(table, {
      key: (m) => m.topic,
      onRow: (m) => this.expand(table, m),
      load: (query) => api('retained', { query }),
      columns: [
        { label: 'Topic', value: (m) => h('code', null, m.topic) },
        { label: 'Payload', value: (m) => h('span.preview', null, previewPayload(payloadBytes(m), 60)) },
        { label: 'Size', value: (m) => bytesText(m.size) },
        { label: 'QoS', value: (m) => m.qos },
        { label: 'Stored', value: (m) => new Date(m.publish_at).toLocaleString() },
        { label: '', value: (m) => h('button.danger.delete', { type: 'button', 'aria-label': `Delete ${m.topic}`, onclick: () => this.remove(m.topic) }, 'Delete') },
      ],
    });
    bindSearch(form, this.listing);
  }

  refresh() {
    return this.listing.show();
  }

  /** Shows a message's whole payload (JSON pretty-printed, binary as hex) under its row. */
  expand(table, message) {
    const row = [...table.querySelectorAll('tbody tr')].find((r) => r.dataset.key === message.topic);
    if (!row) return;
    if (row.nextElementSibling?.classList.contains('expanded')) {
      row.nextElementSibling.remove();
      return;
    }
    const payload = describePayload(payloadBytes(message));
    const properties = Object.keys(message.properties).length ? JSON.stringify(message.properties, null, 2) : null;
    row.after(h('tr.expanded', null, h('td', { colSpan: 6 },
      h(`pre.payload.payload-${payload.kind}`, { dataset: { kind: payload.kind } }, payload.text || '(empty)'),
      properties ? h('pre.properties', null, properties) : null)));
  }

  async remove(topic) {
    if (!confirm(`Delete the retained message of ${topic}?`)) return;
    try {
      await deleteRetained(topic);
      this.onDeleted(topic);
      await this.refresh();
    } catch (error) {
      alert(error.message);
    }
  }
}
