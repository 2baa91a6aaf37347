// Automatic contrast: the colour range spans chosen percentiles of the finite values,
// so a few hot pixels (or the empty start of a scan) do not wash out the image.

export type Domain = [number, number];

export const PERCENTILE_CHOICES: Record<string, [number, number]> = {
  'min–max': [0, 100],
  '0.1–99.9 %': [0.1, 99.9],
  '0.5–99.5 %': [0.5, 99.5],
  '1–99 %': [1, 99],
  '2–98 %': [2, 98],
  '5–95 %': [5, 95],
};
export const DEFAULT_PERCENTILES = '0.5–99.5 %';

const MAX_SAMPLES = 1 << 18; // a strided sample keeps 2048x2048 slices under ~20 ms

export function percentileDomain(values: ArrayLike<number>, lo: number, hi: number): Domain {
  const step = Math.max(1, Math.floor(values.length / MAX_SAMPLES));
  const sample = new Float64Array(Math.ceil(values.length / step));
  let n = 0;
  for (let i = 0; i < values.length; i += step) {
    const v = values[i];
    if (Number.isFinite(v)) sample[n++] = v;
  }
  if (n === 0) return [0, 1];
  const sorted = sample.subarray(0, n).sort();
  const at = (p: number): number => sorted[Math.min(n - 1, Math.max(0, Math.round((p / 100) * (n - 1))))];
  return widen([at(lo), at(hi)]);
}

/** h5web needs min < max: a flat image (e.g. before the first projection) gets a unit range. */
export function widen([min, max]: Domain): Domain {
  if (max > min) return [min, max];
  const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.01 : 0.5;
  return [min - pad, max + pad];
}

export interface ColourSettings {
  percentiles: string;
  min: string; // manual limit, '' = automatic
  max: string;
}

export const AUTO_COLOURS: ColourSettings = { percentiles: DEFAULT_PERCENTILES, min: '', max: '' };

export interface ColourResult {
  auto: Domain; // from the percentiles
  shown: Domain; // what the colour map spans
  invalid: boolean; // manual limits that cannot be used (min >= max): auto is shown
}

export function colourDomain(values: ArrayLike<number>, settings: ColourSettings): ColourResult {
  const [lo, hi] = PERCENTILE_CHOICES[settings.percentiles] ?? PERCENTILE_CHOICES[DEFAULT_PERCENTILES];
  const auto = percentileDomain(values, lo, hi);
  const parse = (text: string, fallback: number): number => {
    const v = Number.parseFloat(text);
    return text.trim() !== '' && Number.isFinite(v) ? v : fallback;
  };
  const manual: Domain = [parse(settings.min, auto[0]), parse(settings.max, auto[1])];
  if (manual[0] >= manual[1]) return { auto, shown: auto, invalid: true };
  return { auto, shown: manual, invalid: false };
}
