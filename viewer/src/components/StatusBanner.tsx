// Connection state: a clear message for a missing domain or an endpoint that is
// gone; it disappears by itself when the poll loop gets answers again.

import type { Snapshot } from '../live';

function explain(status: number): string {
  if (status === 404) return 'Domain not found';
  if (status === 502 || status === 504) return 'HDF REST endpoint not reachable';
  if (status === 401 || status === 403) return 'Access refused by the endpoint';
  if (status === 0) return 'Viewer server not reachable';
  if (status === -1) return 'Unexpected answer from the endpoint';
  return `Error ${status}`;
}

export function StatusBanner({ snap }: { snap: Snapshot }) {
  if (snap.connection === 'connecting') return <div id="banner" className="banner info">connecting…</div>;
  if (snap.connection === 'live' || !snap.error) return null;
  return (
    <div id="banner" className="banner error" role="alert">
      <strong>{explain(snap.error.status)}:</strong> {snap.error.message}. Retrying every second; the page recovers by itself
      {snap.slice ? ' (the images below are the last ones read)' : ''}.
    </div>
  );
}
