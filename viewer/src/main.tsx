import '@h5web/lib/styles.css';
import './styles.css';

import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';

import { loadViewerConfig } from './api';
import { App } from './App';
import { LiveDomain } from './live';

async function main(): Promise<void> {
  const root = createRoot(document.getElementById('root')!);
  let config;
  try {
    config = await loadViewerConfig();
  } catch (error) {
    root.render(<p className="banner error">cannot reach the viewer server: {(error as Error).message}. Reload the page when it is back.</p>);
    return;
  }
  document.title = `${config.domain} · streamtomo`;
  const live = new LiveDomain();
  live.start();
  root.render(
    <StrictMode>
      <App live={live} config={config} />
    </StrictMode>,
  );
}

void main();
