// The snippet of streamtomo/app/viewer/README.md ("Other viewers", h5web), with the
// endpoint, domain and (for an HSDS with accounts) the account taken from the query
// string so the test can point it at a live server. tsc checks the props against the
// real @h5web/app types: a missing `fetcher` (the @h5web/app 17 change) fails the build.
import { App, HsdsProvider, buildBasicAuthHeader, createBasicFetcher } from '@h5web/app';
import '@h5web/app/styles.css';
import { createRoot } from 'react-dom/client';

declare global {
  interface Window {
    __errors: string[];
  }
}
window.__errors = [];
window.addEventListener('error', (event) => window.__errors.push(String(event.message)));
window.addEventListener('unhandledrejection', (event) => window.__errors.push(String(event.reason)));

const query = new URLSearchParams(window.location.search);
const url = query.get('url') ?? 'http://127.0.0.1:8100';
const filepath = query.get('domain') ?? '/streamtomo/live.h5';
const user = query.get('user');

// As in the README: no account for streamtomo's own endpoint, Basic auth for an HSDS.
const fetcher = user
  ? createBasicFetcher({ headers: buildBasicAuthHeader(user, query.get('password') ?? '') })
  : createBasicFetcher();

createRoot(document.getElementById('root') as HTMLElement).render(
  <HsdsProvider url={url} filepath={filepath} fetcher={fetcher}>
    <App propagateErrors />
  </HsdsProvider>,
);
