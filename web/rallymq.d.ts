// Type declarations for rallymq.js: a dependency-free MQTT 3.1.1 / 5.0 client over WebSockets.

/** A message payload as given to publish(): bytes, text, or any other value sent as JSON. */
export type PayloadInput = Uint8Array | ArrayBuffer | ArrayBufferView | string | unknown

/** MQTT 5 properties, by their camelCase names. Byte-valued flags are 0 or 1. */
export interface Properties {
  payloadFormatIndicator?: number
  messageExpiryInterval?: number
  contentType?: string
  responseTopic?: string
  correlationData?: Uint8Array
  /** A number in SUBSCRIBE; in a received PUBLISH, the list of matching identifiers. */
  subscriptionIdentifier?: number | number[]
  sessionExpiryInterval?: number
  assignedClientIdentifier?: string
  serverKeepAlive?: number
  authenticationMethod?: string
  authenticationData?: Uint8Array
  requestProblemInformation?: number
  willDelayInterval?: number
  requestResponseInformation?: number
  responseInformation?: string
  serverReference?: string
  reasonString?: string
  receiveMaximum?: number
  topicAliasMaximum?: number
  topicAlias?: number
  maximumQoS?: number
  retainAvailable?: number
  /** Decoded as [name, value] pairs in order; an object is accepted when encoding. */
  userProperties?: [string, string][] | Record<string, string>
  maximumPacketSize?: number
  wildcardSubscriptionAvailable?: number
  subscriptionIdentifiersAvailable?: number
  sharedSubscriptionAvailable?: number
}

export type QoS = 0 | 1 | 2

export interface Will {
  topic: string
  payload?: PayloadInput
  qos?: QoS
  retain?: boolean
  properties?: Properties
}

export interface Subscription {
  filter: string
  qos: QoS
  /** No Local (MQTT 5). */
  nl: boolean
  /** Retain As Published (MQTT 5). */
  rap: boolean
  /** Retain Handling 0, 1 or 2 (MQTT 5). */
  rh: number
}

export interface ConnectPacket {
  type: 'connect'
  version: 4 | 5
  clean: boolean
  keepalive: number
  properties: Properties
  clientId: string
  will?: { topic: string; payload: Uint8Array; qos: QoS; retain: boolean; properties: Properties }
  username?: string
  password?: Uint8Array
}
export interface ConnackPacket {
  type: 'connack'
  sessionPresent: boolean
  /** Reason code (MQTT 5) or return code (3.1.1). */
  code: number
  properties: Properties
}
export interface PublishPacket {
  type: 'publish'
  topic: string
  payload: Uint8Array
  qos: QoS
  retain: boolean
  dup: boolean
  /** Packet identifier, present for QoS 1 and 2. */
  id?: number
  properties: Properties
}
export interface AckPacket {
  type: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp'
  id: number
  code: number
  properties: Properties
}
export interface SubscribePacket {
  type: 'subscribe'
  id: number
  properties: Properties
  subscriptions: Subscription[]
}
export interface SubackPacket {
  type: 'suback' | 'unsuback'
  id: number
  properties: Properties
  /** Granted QoS or reason codes, one per filter (empty in a 3.1.1 UNSUBACK). */
  codes: number[]
}
export interface UnsubscribePacket {
  type: 'unsubscribe'
  id: number
  properties: Properties
  filters: string[]
}
export interface PingPacket {
  type: 'pingreq' | 'pingresp'
}
export interface DisconnectPacket {
  type: 'disconnect' | 'auth'
  code: number
  properties: Properties
}
export type Packet =
  | ConnectPacket
  | ConnackPacket
  | PublishPacket
  | AckPacket
  | SubscribePacket
  | SubackPacket
  | UnsubscribePacket
  | PingPacket
  | DisconnectPacket

/** The subset of the Web Storage API persistence uses (localStorage fits). */
export interface StorageLike {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

export interface ReconnectOptions {
  /** First delay in milliseconds (default 1000); doubles per failed attempt, with jitter. */
  min?: number
  /** Largest delay in milliseconds (default 30000). */
  max?: number
}

export interface ConnectOptions {
  /** Default: a random 'rallymq-…' id. Give a stable one to use persistence. */
  clientId?: string
  username?: string
  /**
   * The password, or a function called before each connection attempt (the first and every
   * reconnect) that returns one or a promise of one: a fresh JSON Web Token, say. A thrown
   * error or a rejected promise fails that attempt like a refused connection.
   */
  password?: string | Uint8Array | (() => string | Uint8Array | PromiseLike<string | Uint8Array>)
  /** 5 (default) or 4 (MQTT 3.1.1). */
  protocolVersion?: 4 | 5
  /** Seconds between PINGREQs (default 60; 0 disables); no PINGRESP in that time closes. */
  keepalive?: number
  /** Clean start on the first connection (default true). */
  clean?: boolean
  /** MQTT 5 Session Expiry Interval in seconds. */
  sessionExpiry?: number
  will?: Will
  /** Automatic reconnect (default true). */
  reconnect?: boolean | ReconnectOptions
  /** true: localStorage; or any StorageLike. Default: no persistence. */
  persistence?: boolean | StorageLike
  /** Most messages and requests waiting to be sent (default 1000). */
  queueLimit?: number
  /** Most bytes of persisted state (default 262144); past it, a QuotaExceededError. */
  storeLimit?: number
  /** Milliseconds to wait for CONNACK (default 30000). */
  connectTimeout?: number
  /**
   * MQTT 5 Topic Alias Maximum announced in CONNECT (default 64; 0 announces none): the broker
   * may then send an alias instead of a topic it sent before. Messages always come out with
   * their topic. `properties.topicAliasMaximum`, if given, wins.
   */
  topicAliasMaximum?: number
  /** Extra MQTT 5 CONNECT properties. */
  properties?: Properties
  /** A WebSocket constructor (e.g. from the `ws` package in Node). Default: globalThis.WebSocket. */
  WebSocket?: new (url: string, protocols?: string | string[]) => any
}

export interface PublishOptions {
  qos?: QoS
  retain?: boolean
  properties?: Properties
}

export interface SubscribeOptions {
  qos?: QoS
  nl?: boolean
  rap?: boolean
  rh?: 0 | 1 | 2
  properties?: Properties
}

/** An Error from the protocol or the client; `code` is an MQTT 5 reason code where one applies. */
export interface MqttError extends Error {
  code?: number
  /** SUBACK / UNSUBACK codes when a subscribe or unsubscribe failed. */
  codes?: number[]
}

export interface ClientEvents {
  connect: (connack: ConnackPacket) => void
  reconnect: () => void
  offline: () => void
  close: () => void
  error: (error: MqttError) => void
  message: (topic: string, payload: Uint8Array, packet: PublishPacket) => void
  disconnect: (packet: DisconnectPacket) => void
}

export class Client {
  constructor(url: string, options?: ConnectOptions)
  readonly url: string
  readonly clientId: string
  /** Whether a CONNACK has been received on the current connection. */
  readonly connected: boolean
  /** Resolves on the first successful CONNACK. */
  readonly ready: Promise<Client>
  /** Resolves when the QoS flow completes: written (0), PUBACK (1), PUBCOMP (2). */
  publish(topic: string, payload?: PayloadInput, options?: PublishOptions): Promise<AckPacket | undefined>
  /** Resolves with the SUBACK codes; rejects if any is a failure (>= 0x80). */
  subscribe(
    filters: string | Array<string | (Partial<Subscription> & { filter: string })>,
    options?: SubscribeOptions,
  ): Promise<number[]>
  unsubscribe(filters: string | string[], options?: { properties?: Properties }): Promise<number[]>
  /** Sends DISCONNECT and closes, without reconnecting; persisted messages stay stored. */
  end(): Promise<void>
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this
  off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this
  once<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this
}

/** Resolves with the client on the first successful CONNACK; rejects if that attempt fails. */
export function connect(url: string, options?: ConnectOptions): Promise<Client>
/** A client that connects and reconnects in the background, usable at once (even offline). */
export function createClient(url: string, options?: ConnectOptions): Client
/** The payload as UTF-8 text. */
export function text(payload: Uint8Array): string
/** The payload parsed as JSON. */
export function json<T = unknown>(payload: Uint8Array): T
/** Encodes a packet for protocol version 4 or 5 (CONNECT uses its own `version`). */
export function encode(packet: Packet, version?: 4 | 5): Uint8Array
/**
 * Decodes the packet at the start of `bytes`: [packet, bytes used], or null when more bytes are
 * needed. Throws an MqttError on malformed input or a packet larger than `max`.
 */
export function decode(bytes: Uint8Array, version?: 4 | 5, max?: number): [Packet, number] | null
