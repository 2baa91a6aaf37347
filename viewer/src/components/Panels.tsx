// The three image panels: live slice, sinogram of one row, centre-of-rotation sweep.

import { Annotation, type ColorMap } from '@h5web/lib';
import { useState } from 'react';

import { AUTO_COLOURS, type ColourSettings } from '../contrast';
import type { LiveDomain, Snapshot } from '../live';
import { ColourControls } from './ColourControls';
import { ImageView } from './ImageView';

export interface ColourMapChoice {
  colorMap: ColorMap;
  invert: boolean;
}

interface PanelProps {
  snap: Snapshot;
  live: LiveDomain;
  cmap: ColourMapChoice;
}

function Waiting({ what }: { what: string }) {
  return <div className="vis waiting">{what}</div>;
}

/** What stands in for an image that will not come: a scan that ended without it (a
 *  failed scan said "waiting for the first slices" for good), else ``waiting``. */
function missingText(snap: Snapshot, what: string, waiting: string): string {
  const state = snap.status?.state;
  if (state === 'failed' || state === 'stopped' || state === 'finished') {
    return `no ${what}: the scan ${state} without ${what === 'sinogram' ? 'one' : 'any'} (see its state and reason)`;
  }
  return waiting;
}

export function SlicePanel({ snap, live, cmap }: PanelProps) {
  const [colours, setColours] = useState<ColourSettings>(AUTO_COLOURS);
  const { slice, sliceRows } = snap;
  // The image's own row: the selection may have moved on while the endpoint was away.
  const row = sliceRows[slice ? slice.index : snap.sliceIndex];
  return (
    <section className="panel slice-panel">
      <header>
        <h2>Live slice</h2>
        <label>
          slice{' '}
          <select id="slice-select" value={snap.sliceIndex} onChange={(e) => live.selectSlice(Number(e.target.value))} disabled={sliceRows.length === 0}>
            {sliceRows.map((r, k) => (
              <option key={k} value={k}>
                {k}: detector row {r}
              </option>
            ))}
          </select>
        </label>
        <span className="hint">{snap.nProjections} projections in the slices</span>
      </header>
      {slice ? (
        <ImageView
          panel="slice" image={slice} colours={colours} colorMap={cmap.colorMap} invertColorMap={cmap.invert} aspect="equal"
          title={`slice at detector row ${row ?? '?'} · ${slice.nProjections} projections`}
          abscissa={{ label: 'x (pixels)' }} ordinate={{ label: 'y (pixels)' }}
        >
          {(result) => <ColourControls id="slice-colour" value={colours} result={result} units="1/pixel (attenuation)" onChange={setColours} />}
        </ImageView>
      ) : (
        <Waiting what={missingText(snap, 'slices', 'waiting for the first slices (the detector shape is known after the first frame)')} />
      )}
    </section>
  );
}

function monotonic(values: ArrayLike<number>): boolean {
  for (let i = 1; i < values.length; i += 1) if (!(values[i] > values[i - 1])) return false;
  return values.length > 1;
}

export function SinogramPanel({ snap, live, cmap }: PanelProps) {
  const [colours, setColours] = useState<ColourSettings>(AUTO_COLOURS);
  const { sinogram, detectorRows, angles } = snap;
  const follow = live.followsSlice;
  // Measured angles label the axis when they increase (h5web needs monotonic axis values).
  const angleAxis = angles && sinogram && angles.length === sinogram.shape[0] && monotonic(angles) ? Float64Array.from(angles) : undefined;
  return (
    <section className="panel sino-panel">
      <header>
        <h2>Sinogram</h2>
        <label>
          row{' '}
          <select
            id="sino-select" value={follow ? 'follow' : snap.sinoRow} disabled={detectorRows.length === 0}
            onChange={(e) => (e.target.value === 'follow' ? live.selectSinogramRow(0, true) : live.selectSinogramRow(Number(e.target.value)))}
          >
            <option value="follow">row of the slice ({detectorRows[snap.sinoRow] ?? '?'})</option>
            {detectorRows.map((r, k) => (
              <option key={k} value={k}>
                detector row {r}
              </option>
            ))}
          </select>
        </label>
      </header>
      {sinogram ? (
        <ImageView
          panel="sinogram" image={sinogram} colours={colours} colorMap={cmap.colorMap} invertColorMap={cmap.invert} aspect="auto"
          title={`sinogram of detector row ${detectorRows[sinogram.index] ?? '?'}`}
          abscissa={{ label: 'detector column (pixels)' }}
          ordinate={{ label: angleAxis ? 'rotation angle (degrees)' : 'angle slot', value: angleAxis }}
        >
          {(result) => <ColourControls id="sino-colour" value={colours} result={result} units="-log transmission" onChange={setColours} />}
        </ImageView>
      ) : (
        <Waiting what={missingText(snap, 'sinogram', 'waiting for the sinogram')} />
      )}
    </section>
  );
}

export function SweepPanel({ snap, cmap, onUseCentre }: PanelProps & { onUseCentre: (centre: number) => void }) {
  const [colours, setColours] = useState<ColourSettings>(AUTO_COLOURS);
  const { sweep } = snap;
  if (!sweep) return null;
  const { image, centers, tiles } = sweep;
  const width = image.shape[1] / tiles;
  const labelled = centers !== null && centers.length === tiles && tiles > 1;
  // The sweep reconstructs the middle live slice's row; the page opened on slice 0 and
  // did not say which row the strip is, nor which centre the slices use.
  const row = snap.sliceRows.length ? snap.sliceRows[Math.floor(snap.sliceRows.length / 2)] : null;
  const set = Number.parseFloat(String(snap.parameters?.center ?? ''));
  const inUse = Number.isFinite(set) ? set : snap.sinoShape ? (snap.sinoShape[2] - 1) / 2 : null;
  const used = (c: number) => inUse !== null && Math.abs(c - inUse) < 1e-3;
  return (
    <section className="panel sweep-panel" id="sweep-panel">
      <header>
        <h2>Centre-of-rotation sweep</h2>
        {centers && (
          <span className="centres">
            use centre:{' '}
            {centers.map((c) => (
              <button type="button" key={c} className={used(c) ? 'in-use' : undefined} onClick={() => onUseCentre(c)}>
                {used(c) ? `${c} (in use)` : c}
              </button>
            ))}
          </span>
        )}
      </header>
      <ImageView
        panel="sweep" image={image} colours={colours} colorMap={cmap.colorMap} invertColorMap={cmap.invert} aspect="equal"
        title={
          (row !== null ? `detector row ${row} (the middle live slice)` : 'one row') +
          (labelled ? ` reconstructed with ${tiles} centres of rotation (pixels), left to right` : ': centre-of-rotation sweep')
        }
        abscissa={{ label: 'x (pixels), one tile per centre' }} ordinate={{ label: 'y (pixels)' }}
        overlay={
          labelled &&
          centers.map((c, t) => (
            // h5web places the label in data coordinates: above the middle of its tile.
            <Annotation key={c} x={(t + 0.5) * width} y={image.shape[0] * 0.92} center className="sweep-label">
              {c}
            </Annotation>
          ))
        }
      >
        {(result) => <ColourControls id="sweep-colour" value={colours} result={result} units="1/pixel" onChange={setColours} />}
      </ImageView>
    </section>
  );
}
