import { ColorMapSelector, Toolbar } from '@h5web/lib';
import { useEffect, useState, useSyncExternalStore } from 'react';

import type { ViewerConfig } from './api';
import { ControlPanel } from './components/ControlPanel';
import { SinogramPanel, SlicePanel, SweepPanel, type ColourMapChoice } from './components/Panels';
import { ProgressPanel } from './components/ProgressPanel';
import { StatusBanner } from './components/StatusBanner';
import type { LiveDomain } from './live';

export function App({ live, config }: { live: LiveDomain; config: ViewerConfig }) {
  const snap = useSyncExternalStore(live.subscribe, live.getSnapshot);
  const [cmap, setCmap] = useState<ColourMapChoice>({ colorMap: 'Viridis', invert: false });
  const [pendingCentre, setPendingCentre] = useState<number | null>(null);
  // A centre picked in the last scan's sweep is not this scan's.
  useEffect(() => setPendingCentre(null), [snap.scanEpoch]);
  const panelProps = { snap, live, cmap };
  return (
    <div className={`app connection-${snap.connection}`}>
      <header className="top">
        <h1>streamtomo live viewer</h1>
        <span className="where">
          domain <code id="domain-name">{config.domain}</code> at <code>{config.endpoint}</code>
        </span>
        <span id="connection" className={`badge ${snap.connection}`}>{snap.connection}</span>
        <Toolbar>
          <ColorMapSelector
            value={cmap.colorMap}
            onValueChange={(colorMap) => setCmap({ ...cmap, colorMap })}
            invert={cmap.invert}
            onInversionChange={() => setCmap({ ...cmap, invert: !cmap.invert })}
          />
        </Toolbar>
      </header>
      <StatusBanner snap={snap} />
      <main>
        <div className="images">
          <SlicePanel {...panelProps} />
          <SinogramPanel {...panelProps} />
        </div>
        <aside>
          <ProgressPanel snap={snap} />
          <ControlPanel
            scanEpoch={snap.scanEpoch}
            available={config.control}
            effective={snap.parameters}
            detectorWidth={snap.sinoShape?.[2] ?? null}
            pendingCentre={pendingCentre}
            scanState={snap.status?.state ?? null}
            settingsPending={(snap.status?.counts.settings_pending ?? 0) > 0}
          />
        </aside>
      </main>
      <SweepPanel {...panelProps} onUseCentre={setPendingCentre} />
    </div>
  );
}
