// Vendored verbatim from the seed: /work/shared/seed/000_a852db5203098142.txt, the code block
// **next/libs/VesselClient.ts** of the blog post "低遅延配信を目指してWebRTCに行き着いた話".
// Unmodified below this header (the mediasoup-client dialect of Vessel's socket.io protocol at
// /media); tests/browser/mediasoup.test.mjs bundles it with esbuild. Do not edit: adapt the tests.
import {io as SocketIO, Socket} from 'socket.io-client';
import { Device } from 'mediasoup-client';
import type { types as Mediasoup } from 'mediasoup-client';
import { Stream } from 'node:stream';

type ProduceResponse = {kind: Mediasoup.MediaKind, rtpParameters: Mediasoup.RtpParameters};
type ConsumeResponse = {producerId: string, id: string, kind: Mediasoup.MediaKind, rtpParameters: Mediasoup.RtpParameters}

export class VesselClient {
  private device: Device;
  private socket: Socket;
  private videoProducer: Mediasoup.Producer;
  private audioProducer: Mediasoup.Producer;
  private dataProducer: Mediasoup.DataProducer;

  private consumer: Mediasoup.Consumer;

  constructor() {
    this.device = new Device();
  }

  async connectToVesselServer(path: string) {
    this.socket = SocketIO({
      path,
      autoConnect: false,
    });

    const {socket} = this;

    await new Promise<void>((resolve) => {
      socket.on('connect', resolve);
      socket.connect();
    });
  }

  async requestSocket<T>(requestName: string, params?: any): Promise<T> {
    const {socket} = this;
    return await new Promise((resolve) => {
      socket.emit(requestName, params);
      socket.once(`re:${requestName}`, (response: T) => {
        resolve(response);
      });
    });
  }

  private routerRtpCapabilities: Mediasoup.RtpCapabilities | undefined;

  async requestRouterCapabilities() {
    this.routerRtpCapabilities = await this.requestSocket<Mediasoup.RtpCapabilities>('routerCapabilities');

    const {device, routerRtpCapabilities} = this;
    await device.load({routerRtpCapabilities});

    return routerRtpCapabilities;
  }

  async subscribe() {
    const {device} = this;
    const transportOptions = await this.requestSocket<Mediasoup.TransportOptions>('createConsumerTransport');
    const receiveTransport = device.createRecvTransport(transportOptions);

    receiveTransport.on('connect', async (response: {dtlsParameters: Mediasoup.DtlsParameters}, successCallback: () => void, errorCallback: () => void) => {
      this.requestSocket('connectConsumerTransport', {
        transportId: transportOptions.id,
        dtlsParameters: response.dtlsParameters,
      }).then(successCallback).catch(errorCallback);
    });

    receiveTransport.on('connectionstatechange', async (state) => {
      console.log({state});
    });

    const {rtpCapabilities} = this.device;
    const consumeResponse = await this.requestSocket<ConsumeResponse>('consume', rtpCapabilities);

    this.consumer = await receiveTransport.consume({
      producerId: consumeResponse.producerId,
      id: consumeResponse.id,
      kind: consumeResponse.kind,
      rtpParameters: consumeResponse.rtpParameters,
    });

    const {consumer} = this;

    const mediaStream = new MediaStream();
    mediaStream.addTrack(consumer.track);
    return mediaStream;
  }

  async publish(publishMedia: {video: boolean, audio: boolean}) {
    const {device} = this;

    const transportOptions = await this.requestSocket<Mediasoup.TransportOptions>('createProducerTransport');
    const sendTransport = device.createSendTransport(transportOptions);

    sendTransport.on('connect', async (response: {dtlsParameters: Mediasoup.DtlsParameters}, successCallback: () => void, errorCallback: () => void) => {
      console.log('connected');
      this.requestSocket('connectProducerTransport', {
        transportId: transportOptions.id,
        dtlsParameters: response.dtlsParameters,
      }).then(successCallback).catch(errorCallback);
    });
    sendTransport.on('produce', async (response: ProduceResponse, successCallback: ({id: string}) => void, errorCallback: () => void) => {
      const producerId = await this.requestSocket<string>('produce', {
        transportId: sendTransport.id,
        kind: response.kind,
        rtpParameters: response.rtpParameters,
      });
      console.log('produce', producerId);
      successCallback({id: producerId});
    });

    sendTransport.on('connectionstatechange', (status: string) => {
      console.log({status});
      switch (status) {
        case 'connecting':
          break;
        case 'connected':
          break;
      }
    });

    const {video, audio} = publishMedia;
    const stream = await navigator.mediaDevices.getUserMedia({
      video,
      // audio,
    });

    if (video) {
      const videoTrack = stream.getVideoTracks()[0];
      this.videoProducer = await sendTransport.produce({
        track: videoTrack,
        encodings: [
          { maxBitrate: 100000 },
          { maxBitrate: 300000 },
          { maxBitrate: 900000 },
        ],
      });
    }

    return stream;
  }
}

