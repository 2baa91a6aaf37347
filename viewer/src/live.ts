// The live domain as the page sees it: one poll loop outside React that reads
// /entry/status/generation, and only when the published content changed re-reads the
// status and the *selected* slice and sinogram row (binary hyperslabs). React
// subscribes with useSyncExternalStore.

import {
  ApiError,
  UNEXPECTED,
  loadObjects,
  readBinary,
  readValue,
  type HdfObject,
  type NumericArray,
  type ObjectMap,
} from './api';
import { debug } from './debug';

const POLL_MS = 250; // the reducer publishes every 0.25 s by default
const RETRY_MS = 1000;
const SWEEP_RECHECK_MS = 5000; // how often a running scan is checked for a new CoR sweep
// The CoR sweep is several whole slices (7 x 2048^2 float32: 117 MB): read again at most
// every 2 s, and no faster than 20 MB/s, unless the scan's state or parameters moved.
const SWEEP_REFRESH_MS = 2000;
const SWEEP_BYTES_PER_MS = 20e3;

const P = {
  generation: '/entry/status/generation',
  status: '/entry/status',
  recon: '/entry/reconstruction/data',
  sliceRows: '/entry/reconstruction/slice_rows',
  nProjections: '/entry/reconstruction/n_projections',
  parameters: '/entry/reconstruction/parameters',
  sino: '/entry/sinogram/data',
  angles: '/entry/sinogram/rotation_angle',
  framesPerAngle: '/entry/sinogram/frames_per_angle',
  detectorRow: '/entry/sinogram/detector_row',
  sweep: '/entry/reconstruction/cor_sweep',
} as const;

/** What the page holds no longer matches the domain (a new scan: other shapes, other
 *  datasets): start over from the object list. */
class LayoutChanged extends Error {}

const STATUS_NUMBERS = [
  'frames_received', 'frames_rejected', 'projections', 'missing_angles', 'pending_projections',
  'darks', 'flats', 'frames_lost', 'volume_slices_done', 'settings_pending',
] as const;

export interface Status {
  state: string;
  reason: string; // why the scan failed or stopped, frames that never came, why its volume is incomplete ('' if none)
  rejected: Record<string, number>; // counts per reason
  generation: number;
  lastUpdate: number | null; // unix seconds
  counts: Partial<Record<(typeof STATUS_NUMBERS)[number], number>>;
}

export interface Image {
  data: Float32Array;
  shape: [number, number]; // rows (y), columns (x)
  index: number; // slice / sinogram row index
  generation: number;
  framesReceived: number;
  nProjections: number;
  fetchedAt: number; // Date.now()
}

export interface Sweep {
  image: Image; // the strip, tiles side by side
  centers: number[] | null; // one per tile
  tiles: number;
}

export type Connection = 'connecting' | 'live' | 'error';

export interface Snapshot {
  connection: Connection;
  scanEpoch: number; // counts the scans (and layouts) the page has started over for
  error: { status: number; message: string } | null;
  generation: number | null;
  status: Status | null;
  nProjections: number;
  parameters: Record<string, unknown> | null; // effective configuration published in the domain
  sliceRows: number[];
  detectorRows: number[];
  angles: NumericArray | null;
  framesPerAngle: NumericArray | null;
  reconShape: number[] | null;
  sinoShape: number[] | null;
  slice: Image | null;
  sinogram: Image | null;
  sweep: Sweep | null;
  sliceIndex: number;
  sinoRow: number;
}

const INITIAL: Snapshot = {
  connection: 'connecting', scanEpoch: 0, error: null, generation: null, status: null, nProjections: 0, parameters: null,
  sliceRows: [], detectorRows: [], angles: null, framesPerAngle: null, reconShape: null, sinoShape: null,
  slice: null, sinogram: null, sweep: null, sliceIndex: 0, sinoRow: 0,
};

function toFloat32(values: NumericArray): Float32Array {
  return values instanceof Float32Array ? values : Float32Array.from(values);
}

function sweepPaths(objects: ObjectMap): { data: HdfObject; centers: HdfObject | null } | null {
  // Published by the reconstruction engine: either a dataset with a sibling
  // centres axis, or an NXdata group holding data + centers. Accept the plausible names.
  const node = objects.get(P.sweep);
  if (!node) return null;
  const find = (...paths: string[]): HdfObject | null => paths.map((p) => objects.get(p)).find((o) => o && o.collection === 'datasets') ?? null;
  const data = node.collection === 'datasets' ? node : find(`${P.sweep}/data`);
  if (!data || data.shape.length < 2) return null;
  const centers = find(
    `${P.sweep}/centers`, `${P.sweep}/center`, `${P.sweep}_centers`, '/entry/reconstruction/cor_centers', '/entry/reconstruction/centers',
  );
  return { data, centers };
}

/** (n, y, x) -> one (y, n*x) strip, so the tiles line up along the centre axis. */
function tile(values: Float32Array, shape: number[]): { data: Float32Array; shape: [number, number]; tiles: number } {
  if (shape.length === 2) return { data: values, shape: [shape[0], shape[1]], tiles: 1 };
  const [n, h, w] = shape.slice(-3);
  const out = new Float32Array(n * h * w);
  for (let t = 0; t < n; t += 1) {
    for (let y = 0; y < h; y += 1) {
      out.set(values.subarray((t * h + y) * w, (t * h + y + 1) * w), y * n * w + t * w);
    }
  }
  return { data: out, shape: [h, n * w], tiles: n };
}

export class LiveDomain {
  private snap: Snapshot = INITIAL;
  private listeners = new Set<() => void>();
  private objects: ObjectMap | null = null;
  private fingerprint: string | null = null;
  private paramsText: unknown = null;
  private sweepKey = '';
  private sweepReadAt = 0;
  private objectsLoadedAt = 0;
  private sliceDirty = true;
  private sinoDirty = true;
  private followSlice = true;
  private stopped = false;
  private wakeUp: (() => void) | null = null;

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getSnapshot = (): Snapshot => this.snap;

  private set(patch: Partial<Snapshot>): void {
    this.snap = { ...this.snap, ...patch };
    debug.snapshot = this.snap;
    this.listeners.forEach((l) => l());
  }

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    this.wakeUp?.();
  }

  selectSlice(index: number): void {
    this.sliceDirty = true;
    if (this.followSlice) this.sinoDirty = true;
    this.set({ sliceIndex: index, sinoRow: this.followSlice ? this.rowOfSlice(index) : this.snap.sinoRow });
    this.wakeUp?.();
  }

  selectSinogramRow(row: number, follow = false): void {
    this.followSlice = follow;
    this.sinoDirty = true;
    this.set({ sinoRow: follow ? this.rowOfSlice(this.snap.sliceIndex) : row });
    this.wakeUp?.();
  }

  get followsSlice(): boolean {
    return this.followSlice;
  }

  private rowOfSlice(index: number): number {
    const detectorRow = this.snap.sliceRows[index];
    const position = this.snap.detectorRows.indexOf(detectorRow);
    return position >= 0 ? position : this.snap.sinoRow;
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      let ok = true;
      try {
        await this.tick();
        if (this.snap.connection !== 'live') this.set({ connection: 'live', error: null });
      } catch (error) {
        ok = false;
        this.fail(error);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ok ? POLL_MS : RETRY_MS);
        this.wakeUp = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wakeUp = null;
    }
  }

  private fail(error: unknown): void {
    const status = error instanceof ApiError ? error.status : UNEXPECTED; // a fetch failure is an ApiError(0)
    const message = error instanceof Error ? error.message : String(error);
    // Start over on recovery: the reducer may have restarted with another layout.
    this.forgetLayout();
    this.set({ connection: 'error', error: { status, message }, generation: null });
  }

  private need(path: string): HdfObject {
    const obj = this.objects?.get(path);
    if (!obj) throw new ApiError(404, `${path} is not in the domain`);
    return obj;
  }

  private async reloadObjects(): Promise<void> {
    this.objects = await loadObjects();
    this.objectsLoadedAt = Date.now();
    debug.fetches.objects += 1;
    const shape = (p: string): number[] | null => this.objects?.get(p)?.shape ?? null;
    const ints = async (p: string): Promise<number[]> => {
      const obj = this.objects?.get(p);
      return obj ? Array.from(await readBinary(obj)) : [];
    };
    const [sliceRows, detectorRows] = await Promise.all([ints(P.sliceRows), ints(P.detectorRow)]);
    const reconShape = shape(P.recon);
    const sliceIndex = Math.min(this.snap.sliceIndex, Math.max((reconShape?.[0] ?? 1) - 1, 0));
    this.set({ reconShape, sinoShape: shape(P.sino), sliceRows, detectorRows, sliceIndex });
    if (this.followSlice) this.set({ sinoRow: this.rowOfSlice(sliceIndex) });
    this.sliceDirty = this.sinoDirty = true;
  }

  private async readStatus(generation: number): Promise<Status> {
    const value = async (name: string): Promise<unknown> => {
      const obj = this.objects?.get(`${P.status}/${name}`);
      return obj ? readValue(obj) : undefined;
    };
    const [state, reason, rejected, lastUpdate, ...numbers] = await Promise.all(
      ['state', 'reason', 'rejected', 'last_update', ...STATUS_NUMBERS].map(value),
    );
    const status: Status = {
      state: String(state ?? 'unknown'),
      reason: reason === undefined ? '' : String(reason),
      rejected: typeof rejected === 'string' ? (JSON.parse(rejected) as Record<string, number>) : {},
      generation,
      lastUpdate: lastUpdate === undefined ? null : Number(lastUpdate),
      counts: {},
    };
    STATUS_NUMBERS.forEach((name, i) => {
      if (numbers[i] !== undefined) status.counts[name] = Number(numbers[i]);
    });
    debug.fetches.status += 1;
    return status;
  }

  /** The object list and what was read by it: read again at the next tick. */
  private forgetLayout(): void {
    this.objects = null;
    this.fingerprint = null;
    this.sliceDirty = this.sinoDirty = true;
  }

  /** A new scan, or a domain whose layout moved under the page: forget the object list
   *  and every image, so nothing of the last scan is shown as this one's. */
  private startOver(): void {
    this.forgetLayout();
    this.paramsText = null;
    this.set({
      scanEpoch: this.snap.scanEpoch + 1,
      generation: null, status: null, nProjections: 0, parameters: null, angles: null, framesPerAngle: null,
      reconShape: null, sinoShape: null, slice: null, sinogram: null, sweep: null,
    });
  }

  private async tick(): Promise<void> {
    try {
      await this.tickOnce();
    } catch (error) {
      // An object of the list gone (404), replaced by one of another shape (410: the
      // server gives it a new id) or seen with another shape: the next scan or new
      // settings. Once, quietly: a second failure right after is a real one.
      const gone = error instanceof ApiError && (error.status === 404 || error.status === 410);
      if (!(error instanceof LayoutChanged || gone)) throw error;
      this.startOver();
      await this.tickOnce();
    }
  }

  private async tickOnce(): Promise<void> {
    if (!this.objects) await this.reloadObjects();
    const generation = Number(await readValue(this.need(P.generation)));
    if (this.snap.generation !== null && generation < this.snap.generation) {
      // Each scan's domain counts from 0 again: everything read so far is the last scan's.
      throw new LayoutChanged(`generation went back from ${this.snap.generation} to ${generation}`);
    }
    let changed = false;
    if (generation !== this.snap.generation) {
      const status = await this.readStatus(generation);
      const paramsObj = this.objects?.get(P.parameters);
      const [nProjections, paramsText] = await Promise.all([
        this.objects?.has(P.nProjections) ? readValue(this.need(P.nProjections)) : 0,
        paramsObj ? readValue(paramsObj) : null,
      ]);
      // The reducer bumps generation on every publish, even when nothing changed (after
      // the scan ends, every 0.25 s): re-read data only when what it publishes moved.
      const fingerprint = JSON.stringify([status.state, status.reason, status.rejected, status.counts, nProjections, paramsText]);
      changed = fingerprint !== this.fingerprint;
      if (changed && this.fingerprint !== null && this.layoutMayHaveChanged(paramsText, status)) {
        await this.reloadObjects();
      }
      this.fingerprint = fingerprint;
      this.paramsText = paramsText;
      const parameters = typeof paramsText === 'string' ? (JSON.parse(paramsText) as Record<string, unknown>) : null;
      this.set({ generation, status, nProjections: Number(nProjections), parameters });
    }
    const reads: Promise<void>[] = [];
    if (changed || this.sliceDirty) reads.push(this.readSlice());
    if (changed || this.sinoDirty) reads.push(this.readSinogram());
    if (changed) reads.push(this.readProgressArrays());
    if (changed && this.sweepDue()) reads.push(this.readSweep());
    await Promise.all(reads);
  }

  /** Whether the CoR sweep is worth reading again now (see SWEEP_REFRESH_MS). */
  private sweepDue(): boolean {
    const key = JSON.stringify([this.snap.status?.state, this.paramsText]);
    const data = this.objects ? sweepPaths(this.objects)?.data : undefined;
    const bytes = (data?.shape ?? []).reduce((a, b) => a * b, 4);
    const wait = Math.max(SWEEP_REFRESH_MS, bytes / SWEEP_BYTES_PER_MS);
    if (this.snap.sweep && key === this.sweepKey && Date.now() - this.sweepReadAt < wait) return false;
    this.sweepKey = key;
    this.sweepReadAt = Date.now();
    return true;
  }

  /** Datasets appear once the detector is known, are recreated when the live slice
   *  rows change (parameters), and the CoR sweep may be added at any time. */
  private layoutMayHaveChanged(paramsText: unknown, status: Status): boolean {
    if (paramsText !== this.paramsText) return true;
    if (!this.objects?.has(P.recon)) return (status.counts.frames_received ?? 0) > 0;
    if (!this.objects.has(P.sweep) && Date.now() - this.objectsLoadedAt > SWEEP_RECHECK_MS) return true;
    return false;
  }

  private imageMeta(index: number): Omit<Image, 'data' | 'shape'> {
    return {
      index,
      generation: this.snap.generation ?? -1,
      framesReceived: this.snap.status?.counts.frames_received ?? 0,
      nProjections: this.snap.nProjections,
      fetchedAt: Date.now(),
    };
  }

  /** Plane ``index`` of a (n, h, w) dataset, checked against the shape the page holds
   *  for it: a new scan's dataset of another size keeps its id on our server. */
  private async readPlane(obj: HdfObject, index: number): Promise<{ data: Float32Array; shape: [number, number] }> {
    const shape: [number, number] = [obj.shape[1], obj.shape[2]];
    const data = toFloat32(await readBinary(obj, `[${index}:${index + 1},:,:]`));
    if (data.length !== shape[0] * shape[1]) {
      throw new LayoutChanged(`${obj.path} holds ${data.length} values where ${shape[0]} x ${shape[1]} were expected`);
    }
    return { data, shape };
  }

  private async readSlice(): Promise<void> {
    this.sliceDirty = false;
    const obj = this.objects?.get(P.recon);
    if (!obj || obj.shape.length !== 3) {
      if (this.snap.slice) this.set({ slice: null }); // not this scan's yet
      return;
    }
    const index = Math.min(this.snap.sliceIndex, obj.shape[0] - 1);
    const plane = await this.readPlane(obj, index);
    debug.fetches.slice += 1;
    this.set({ slice: { ...plane, ...this.imageMeta(index) } });
  }

  private async readSinogram(): Promise<void> {
    this.sinoDirty = false;
    const obj = this.objects?.get(P.sino);
    if (!obj || obj.shape.length !== 3) {
      if (this.snap.sinogram) this.set({ sinogram: null });
      return;
    }
    const row = Math.min(this.snap.sinoRow, obj.shape[0] - 1);
    const plane = await this.readPlane(obj, row);
    debug.fetches.sinogram += 1;
    this.set({ sinogram: { ...plane, ...this.imageMeta(row) } });
  }

  private async readProgressArrays(): Promise<void> {
    const angles = this.objects?.get(P.angles);
    const counts = this.objects?.get(P.framesPerAngle);
    if (!angles || !counts) {
      if (this.snap.angles || this.snap.framesPerAngle) this.set({ angles: null, framesPerAngle: null });
      return;
    }
    const [a, c] = await Promise.all([readBinary(angles), readBinary(counts)]);
    if (a.length !== angles.shape[0] || c.length !== counts.shape[0]) {
      throw new LayoutChanged(`${angles.path} or ${counts.path} changed length`);
    }
    this.set({ angles: a, framesPerAngle: c });
  }

  private async readSweep(): Promise<void> {
    const paths = this.objects ? sweepPaths(this.objects) : null;
    if (!paths) {
      if (this.snap.sweep) this.set({ sweep: null });
      return;
    }
    const [values, centers] = await Promise.all([
      readBinary(paths.data),
      paths.centers ? readBinary(paths.centers) : Promise.resolve(null),
    ]);
    debug.fetches.sweep += 1;
    if (values.length !== paths.data.shape.reduce((a, b) => a * b, 1)) {
      throw new LayoutChanged(`${paths.data.path} holds ${values.length} values, not its shape's`);
    }
    const strip = tile(toFloat32(values), paths.data.shape);
    // A strip published already side by side: one tile per centre when the width divides.
    const tiles = strip.tiles === 1 && centers && strip.shape[1] % centers.length === 0 ? centers.length : strip.tiles;
    this.set({
      sweep: {
        image: { data: strip.data, shape: strip.shape, ...this.imageMeta(0) },
        centers: centers ? Array.from(centers) : null,
        tiles,
      },
    });
  }
}
