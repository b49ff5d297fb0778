// Browser bundle for tests/browser/mediasoup.test.mjs (esbuild, IIFE): the seed's unmodified
// VesselClient, plus socket.io-client's `io` and mediasoup-client for the tests' own clients.
// Imported the way the seed imports them (`io as SocketIO` from socket.io-client, mediasoup-client).
import { VesselClient } from './VesselClient';
import { io as SocketIO } from 'socket.io-client';
import * as mediasoupClient from 'mediasoup-client';

Object.assign(window, { VesselClient, SocketIO, mediasoupClient });
