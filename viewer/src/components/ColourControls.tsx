// Automatic contrast (percentiles of the shown image) with optional manual limits.

import { PERCENTILE_CHOICES, type ColourResult, type ColourSettings } from '../contrast';

interface Props {
  id: string;
  value: ColourSettings;
  result: ColourResult;
  units: string;
  onChange: (value: ColourSettings) => void;
}

const fmt = (v: number): string => (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : v.toPrecision(4));

export function ColourControls({ id, value, result, units, onChange }: Props) {
  return (
    <div className="colour-controls">
      <label>
        auto contrast{' '}
        <select id={`${id}-percentiles`} value={value.percentiles} onChange={(e) => onChange({ ...value, percentiles: e.target.value })}>
          {Object.keys(PERCENTILE_CHOICES).map((k) => (
            <option key={k} value={k}>
              {k}
            </option>
          ))}
        </select>
      </label>
      <label>
        min{' '}
        <input id={`${id}-min`} type="number" step="any" placeholder={fmt(result.auto[0])} value={value.min} onChange={(e) => onChange({ ...value, min: e.target.value })} />
      </label>
      <label>
        max{' '}
        <input id={`${id}-max`} type="number" step="any" placeholder={fmt(result.auto[1])} value={value.max} onChange={(e) => onChange({ ...value, max: e.target.value })} />
      </label>
      {(value.min || value.max) && (
        <button type="button" onClick={() => onChange({ ...value, min: '', max: '' })}>
          auto
        </button>
      )}
      <span className="units" id={`${id}-range`}>
        colour: {fmt(result.shown[0])} … {fmt(result.shown[1])} {units}
        {result.invalid && <em className="warn"> (min must be below max: automatic range shown)</em>}
      </span>
    </div>
  );
}
