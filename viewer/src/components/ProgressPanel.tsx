// Scan progress: state (and why, when the status says), projections, angle coverage
// (one mark per angle slot), frames received and rejected (with reasons), the
// end-of-scan volume's slices, age of the last update.

import { useEffect, useState } from 'react';

import type { Snapshot } from '../live';

function Coverage({ counts }: { counts: ArrayLike<number> }) {
  const n = counts.length;
  const marks = [];
  for (let i = 0; i < n; i += 1) {
    const c = counts[i];
    if (c > 0) marks.push(<rect key={i} x={i} y={0} width={1} height={1} className={c > 1 ? 'repeated' : 'present'} />);
  }
  return (
    <svg className="coverage" viewBox={`0 0 ${n} 1`} preserveAspectRatio="none" role="img" aria-label="angle coverage">
      <rect x={0} y={0} width={n} height={1} className="missing" />
      {marks}
    </svg>
  );
}

function useNow(intervalMs: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(timer);
  }, [intervalMs]);
  return now;
}

export function ProgressPanel({ snap }: { snap: Snapshot }) {
  const now = useNow(1000);
  const { status, framesPerAngle } = snap;
  if (!status) return <section className="panel progress-panel">waiting for the domain…</section>;
  const slots = framesPerAngle?.length ?? snap.sinoShape?.[1] ?? 0;
  let covered = 0;
  framesPerAngle?.forEach((c) => {
    if (c > 0) covered += 1;
  });
  const rejected = Object.entries(status.rejected);
  const age = status.lastUpdate === null ? null : now / 1000 - status.lastUpdate;
  const c = status.counts;
  return (
    <section className="panel progress-panel">
      <h2>Progress</h2>
      <dl>
        <dt>state</dt>
        <dd>
          <span id="scan-state" className={`state state-${status.state}`}>{status.state}</span>
        </dd>
        {status.reason && (
          <>
            <dt>reason</dt>
            <dd id="scan-reason" className="warn">
              {status.reason}
            </dd>
          </>
        )}
        <dt>projections</dt>
        <dd id="projections">
          {c.projections ?? 0}
          {slots ? ` / ${slots}` : ''}
        </dd>
        <dt>angle coverage</dt>
        <dd id="coverage">
          {slots ? `${covered} of ${slots} angles (${((100 * covered) / slots).toFixed(1)} %), ${c.missing_angles ?? slots - covered} missing` : '—'}
          {framesPerAngle && <Coverage counts={framesPerAngle} />}
        </dd>
        <dt>frames received</dt>
        <dd id="frames-received">
          {c.frames_received ?? 0} ({c.darks ?? 0} darks, {c.flats ?? 0} flats)
        </dd>
        <dt>frames rejected</dt>
        <dd id="frames-rejected" className={Number(c.frames_rejected) > 0 ? 'warn' : ''}>
          {c.frames_rejected ?? 0}
          {rejected.length > 0 && ` (${rejected.map(([why, n]) => `${why}: ${n}`).join(', ')})`}
        </dd>
        {Number(c.frames_lost) > 0 && (
          <>
            <dt>frames lost</dt>
            <dd className="warn">{c.frames_lost}</dd>
          </>
        )}
        {(status.state === 'reconstructing' || Number(c.volume_slices_done) > 0) && (
          <>
            <dt>volume</dt>
            <dd id="volume-progress">
              {c.volume_slices_done ?? 0}
              {snap.sinoShape ? ` of ${snap.sinoShape[0]}` : ''} slices
            </dd>
          </>
        )}
        <dt>last update</dt>
        <dd>
          {age === null ? '—' : `${Math.max(age, 0).toFixed(0)} s ago`} (generation {status.generation})
        </dd>
      </dl>
    </section>
  );
}
