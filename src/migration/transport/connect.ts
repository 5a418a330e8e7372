// The connecting side (the migration source): TCP, then TLS if asked, then HELLO → HELLO_ACK.
// connect() resolves only after the listener accepted the HELLO, so a peer with the wrong key or
// certificate fails here, before any page moves.
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { ALL_FEATURES, SESSION_ID_BYTES, type ChannelKind } from '../wire/messages.js';
import { CHANNEL_PREFACE, GO_AHEAD, WIRE_VERSION } from '../wire/limits.js';
import { TransportError, fromSocketError } from './errors.js';
import { FramedChannel } from './framed-channel.js';
import { clientTlsOptions, validateSecurity, type Security } from './security.js';

export interface ConnectOptions {
  host: string;
  port: number;
  security: Security;
  channel: ChannelKind;
  /** 16 bytes shared by the bulk and urgent connections of one migration (newSessionId()). */
  sessionId: Buffer;
  /** Feature bits offered (default: all this build knows). */
  features?: number;
  /** Limit on TCP connect + TLS handshake + HELLO exchange (default 10 s). */
  timeoutMs?: number;
  /** Bulk channel bandwidth cap in bytes/s. */
  maxBandwidth?: number;
}

/** A fresh random 128-bit session id. */
export function newSessionId(): Buffer {
  return randomBytes(SESSION_ID_BYTES);
}

export async function connect(opts: ConnectOptions): Promise<FramedChannel> {
  validateSecurity(opts.security);
  if (typeof opts.host !== 'string' || opts.host.length === 0) throw new TypeError('connect: host is required');
  if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) throw new RangeError(`connect: port must be 1..65535, got ${opts.port}`);
  if (opts.channel !== 'bulk' && opts.channel !== 'urgent') throw new TypeError(`connect: channel must be 'bulk' or 'urgent'`);
  if (!Buffer.isBuffer(opts.sessionId) || opts.sessionId.length !== SESSION_ID_BYTES) {
    throw new TypeError(`connect: sessionId must be a ${SESSION_ID_BYTES}-byte Buffer`);
  }
  const peer = `${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const tcp = net.connect({ host: opts.host, port: opts.port });
  let stream: Duplex = tcp;
  let phase = 'connect';
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `${phase} did not complete within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    await Promise.race([
      timeout,
      new Promise<void>((resolve, reject) => {
        tcp.once('connect', resolve);
        tcp.once('error', (e) => reject(fromSocketError(e, peer, 'connect')));
      }),
    ]);
    tcp.setKeepAlive(true, 10_000);
    if (opts.channel === 'urgent') tcp.setNoDelay(true);
    // The channel preface, then nothing until the listener's GO_AHEAD: the listener routes the
    // connection (an urgent one to another thread) having read exactly this byte.
    phase = 'channel preface';
    tcp.write(Buffer.from([CHANNEL_PREFACE[opts.channel]]));
    let onClose: (() => void) | undefined;
    const answer = await Promise.race([
      timeout,
      new Promise<Buffer>((resolve, reject) => {
        tcp.once('data', resolve);
        tcp.once('error', (e) => reject(fromSocketError(e, peer, 'channel preface')));
        onClose = () => reject(new TransportError('CLOSED', peer, 'the listener closed the connection after the channel preface (is it a Ferry destination of wire version 2 or later?)'));
        tcp.once('close', onClose);
      }),
    ]).finally(() => tcp.off('close', onClose!));
    if (answer.length !== 1 || answer[0] !== GO_AHEAD) {
      throw new TransportError('PROTOCOL', peer, `expected the listener's go-ahead after the channel preface, got ${answer.length} byte(s) ${answer.subarray(0, 8).toString('hex')}`);
    }
    if (opts.security.kind !== 'insecure') {
      phase = 'TLS handshake';
      const secure = tls.connect({ socket: tcp, ...clientTlsOptions(opts.security, opts.host) });
      stream = secure;
      await Promise.race([
        timeout,
        new Promise<void>((resolve, reject) => {
          secure.once('secureConnect', resolve);
          secure.once('error', (e) => reject(fromSocketError(e, peer, 'TLS handshake')));
          secure.once('close', () => reject(new TransportError('TLS', peer, 'connection closed during the TLS handshake')));
        }),
      ]);
    }
    phase = 'HELLO exchange';
    const channel = new FramedChannel({ stream, tcp, peer, tls: opts.security.kind !== 'insecure', ...(opts.maxBandwidth !== undefined ? { maxBandwidth: opts.maxBandwidth } : {}) });
    const offered = opts.features ?? ALL_FEATURES;
    await Promise.race([
      timeout,
      channel.sendMessage({ type: 'HELLO', version: WIRE_VERSION, channel: opts.channel, sessionId: opts.sessionId, features: offered }),
    ]);
    const ack = await Promise.race([timeout, channel.expect('HELLO_ACK')]).catch((err: unknown) => {
      // In TLS 1.3 the client finishes its handshake before the server checks the client's
      // certificate; a rejection then shows up here as a reset or close, so say what it means.
      if (err instanceof TransportError && (err.code === 'CLOSED' || err.code === 'RESET') && opts.security.kind !== 'insecure') {
        throw new TransportError('TLS', peer, `the listener closed the connection before HELLO_ACK (${err.message}): it did not accept our credentials`, { cause: err });
      }
      throw err;
    });
    if ((ack.features & ~offered) !== 0) throw new TransportError('PROTOCOL', peer, `HELLO_ACK grants features we did not offer (0x${ack.features.toString(16)})`);
    channel.session = { sessionId: Buffer.from(opts.sessionId), sessionHex: opts.sessionId.toString('hex'), channel: opts.channel, features: ack.features };
    return channel;
  } catch (err) {
    stream.destroy();
    tcp.destroy();
    throw err instanceof TransportError ? err : fromSocketError(err, peer, phase);
  } finally {
    clearTimeout(timer);
  }
}
