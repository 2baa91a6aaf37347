// Live reconstruction parameters: centre of rotation, filter and the detector rows
// reconstructed, through the viewer server's proxy to the pipeline's control API. The
// slices follow at the next publish.

import { useCallback, useEffect, useRef, useState } from 'react';

import { ApiError, getJson, postValue } from '../api';

const FILTERS = ['ramp', 'shepp-logan', 'hann'];
const APPLY_WAIT_S = 20; // a rebuild at 2048^2 takes seconds; longer means it did not happen
const RECHECK_MS = 5000; // how often a control API that did not answer is asked again

interface ParametersBody {
  parameters: Record<string, string>;
  writable: boolean;
}

interface Props {
  available: boolean; // the viewer server has a control URL
  effective: Record<string, unknown> | null; // what the domain says the slices use
  detectorWidth: number | null;
  pendingCentre: number | null; // e.g. picked in the CoR sweep
  scanEpoch: number; // changes when a new scan starts (LiveDomain.startOver)
  scanState: string | null; // /entry/status/state
  settingsPending: boolean; // /entry/status/settings_pending: a change the slices do not show yet
}

interface Answer {
  next?: string; // what the control API says happens next
}

export function ControlPanel({ available, effective, detectorWidth, pendingCentre, scanEpoch, scanState, settingsPending }: Props) {
  const [current, setCurrent] = useState<ParametersBody | null>(null);
  const [unavailable, setUnavailable] = useState<string | null>(available ? null : 'no pipeline control for this endpoint');
  const [centre, setCentre] = useState('');
  const [rows, setRows] = useState(''); // slice_rows: '' in the box is "not typed", not the default
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);
  const [busy, setBusy] = useState(false);
  // A change the control API took, until the domain's parameters show the slices use it.
  const [awaiting, setAwaiting] = useState<{ name: string; value: string; since: number } | null>(null);
  const scanStateRef = useRef(scanState);
  scanStateRef.current = scanState;

  // A new scan starts with an empty box and no message: the last scan's centre stayed
  // in the box, said to be in use, one click from being applied to the new scan.
  useEffect(() => {
    setCentre('');
    setRows('');
    setMessage(null);
    setAwaiting(null);
  }, [scanEpoch]);

  const refresh = useCallback(async () => {
    if (!available) return;
    try {
      const body = await getJson<ParametersBody>('control/parameters');
      setCurrent(body);
      setUnavailable(body.writable ? null : 'the pipeline does not accept changes');
    } catch (error) {
      setUnavailable(error instanceof ApiError && error.status === 404 ? 'no pipeline is attached to this endpoint' : String((error as Error).message));
    }
  }, [available]);

  // Re-read when the domain's effective parameters change (someone else changed them).
  const effectiveText = JSON.stringify(effective);
  useEffect(() => {
    void refresh();
  }, [refresh, effectiveText]);

  // A control API that did not answer is asked again: one that came back (restarted
  // beside `up`) left the page read-only until a reload.
  useEffect(() => {
    if (!available || unavailable === null) return;
    const timer = setInterval(() => void refresh(), RECHECK_MS);
    return () => clearInterval(timer);
  }, [available, unavailable, refresh]);

  useEffect(() => {
    if (pendingCentre !== null) setCentre(String(pendingCentre));
  }, [pendingCentre]);

  // Taken is not applied: the reducer rebuilds the slices at its next publish, or does
  // not (a change refused then, a scan that ended). Say which, not "set" for good.
  useEffect(() => {
    if (!awaiting) return;
    const shown = effective?.[awaiting.name];
    if (shown !== undefined && String(shown) === awaiting.value) {
      // After the scan's end the volume, the final file and the HSDS mirror keep the
      // scan's settings (settings_pending): only the live slices show the change.
      const kept = settingsPending && scanState !== 'running' ? "; the volume, the final file and the HSDS mirror keep the scan's settings" : '';
      setMessage({ ok: true, text: `${awaiting.name} set to ${awaiting.value || 'default'}: the live slices use it${kept}` });
      setAwaiting(null);
      return;
    }
    const timer = setTimeout(() => {
      if (scanStateRef.current === 'reconstructing') {
        // The change waits for the volume and the final file: not a change that failed.
        setAwaiting({ ...awaiting, since: Date.now() });
        return;
      }
      setMessage({
        ok: false,
        text: `${awaiting.name} set to ${awaiting.value || 'default'} was taken, but after ${APPLY_WAIT_S} s the live slices still do not use it (see the parameters line)`,
      });
      setAwaiting(null);
    }, APPLY_WAIT_S * 1000);
    return () => clearTimeout(timer);
  }, [awaiting, effectiveText, settingsPending, scanState]);

  const post = async (name: string, value: string) => {
    setBusy(true);
    try {
      const answer = (await postValue(`control/parameters/${name}`, value)) as Answer | null;
      setBusy(false);
      // The control API's own words: after the scan's end they say the volume and the
      // final file keep the scan's settings, which "rebuilt in the background" hid.
      const next = answer?.next ? answer.next : 'the slices are rebuilt in the background';
      setMessage({ ok: true, text: `${name} set to ${value || 'default'}: ${next}` });
      setAwaiting({ name, value, since: Date.now() });
      await refresh();
    } catch (error) {
      setBusy(false);
      setMessage({ ok: false, text: `${name} not changed: ${(error as Error).message}` });
    }
  };

  // Read-only (no control API, or it does not answer): the controls show what the
  // slices use, as the domain says, not the defaults (they showed 'middle' and 'ramp'
  // for a scan reconstructed with another centre and filter).
  const params = current?.parameters ?? asParameters(effective);
  const middle = detectorWidth ? ((detectorWidth - 1) / 2).toString() : 'middle';
  // A failed scan has no slices to rebuild.
  const failed = scanState === 'failed';
  const disabled = unavailable !== null || busy || failed;
  const nudge = (delta: number) => {
    const base = Number.parseFloat(centre || params.center || middle);
    if (Number.isFinite(base)) setCentre(String(base + delta));
  };
  return (
    <section className="panel control-panel">
      <h2>Reconstruction</h2>
      {unavailable && <p className="hint">read-only: {unavailable}</p>}
      {failed && !unavailable && <p className="hint">the scan failed: no slices to rebuild</p>}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void post('center', centre.trim());
        }}
      >
        <label>
          centre of rotation (detector column, pixels){' '}
          <input id="center-input" type="number" step="any" value={centre} placeholder={params.center || `${middle} (middle)`} disabled={unavailable !== null || failed} onChange={(e) => setCentre(e.target.value)} />
        </label>
        <span className="nudges">
          {[-1, -0.5, 0.5, 1].map((d) => (
            <button type="button" key={d} disabled={disabled} onClick={() => nudge(d)}>
              {d > 0 ? `+${d}` : d}
            </button>
          ))}
        </span>
        <button id="center-apply" type="submit" disabled={disabled || centre.trim() === ''}>
          apply
        </button>
      </form>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void post('slice_rows', rows.trim().toLowerCase() === 'default' ? '' : rows.trim());
        }}
      >
        <label>
          slices at detector rows{' '}
          <input
            id="slice-rows-input"
            type="text"
            value={rows}
            placeholder={params.slice_rows || '5 spread over the rows (default)'}
            title="comma-separated rows (512,1024), a range a:b:step, or 'default'; the slices are rebuilt from the sinogram"
            disabled={unavailable !== null || failed}
            onChange={(e) => setRows(e.target.value)}
          />
        </label>
        <button id="slice-rows-apply" type="submit" disabled={disabled || rows.trim() === ''}>
          apply
        </button>
      </form>
      <label>
        filter{' '}
        <select id="filter-select" value={params.filter ?? 'ramp'} disabled={disabled} onChange={(e) => void post('filter', e.target.value)}>
          {FILTERS.map((f) => (
            <option key={f} value={f}>
              {f}
            </option>
          ))}
        </select>
      </label>
      <p className="hint" id="effective-parameters">
        in the slices: centre {String(effective?.center || 'middle')}, filter {String(effective?.filter ?? '?')}, rows{' '}
        {String(effective?.slice_rows || 'default')}
      </p>
      {message && (
        <p id="control-message" className={message.ok ? 'ok' : 'error'}>
          {message.text}
        </p>
      )}
    </section>
  );
}

function asParameters(effective: Record<string, unknown> | null): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(effective ?? {})) {
    if (value !== null && value !== undefined) out[name] = String(value);
  }
  return out;
}
