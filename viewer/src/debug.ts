// What the page fetched and drew, on window.__streamtomo: tests compare it with the
// domain and measure latency from it; a person can inspect it in the console.

import type { Snapshot } from './live';

export interface RenderRecord {
  panel: 'slice' | 'sinogram' | 'sweep';
  index: number;
  generation: number;
  framesReceived: number;
  nProjections: number;
  fetchedAt: number; // Date.now() when the data arrived
  drawnAt: number; // Date.now() after the canvas drew it (two animation frames later)
}

function toBase64(data: Float32Array): string {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export const debug = {
  snapshot: null as Snapshot | null,
  renders: [] as RenderRecord[],
  fetches: { objects: 0, status: 0, slice: 0, sinogram: 0, sweep: 0 },
  colourDomain: null as [number, number] | null,
  /** The displayed slice as little-endian float32, base64 (exactly what was fetched). */
  sliceBase64(): string | null {
    return this.snapshot?.slice ? toBase64(this.snapshot.slice.data) : null;
  },
  sinogramBase64(): string | null {
    return this.snapshot?.sinogram ? toBase64(this.snapshot.sinogram.data) : null;
  },
};

declare global {
  interface Window {
    __streamtomo: typeof debug;
  }
}
window.__streamtomo = debug;
