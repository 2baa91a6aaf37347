// Builds the page into the Python package (streamtomo/app/viewer/static), which the viewer
// server serves and the wheel ships as package data. No React plugin: esbuild compiles
// the TSX (jsx: react-jsx in tsconfig), and there is no dev-time fast refresh to need it.
import { defineConfig } from 'vite';

export default defineConfig({
  // Relative asset URLs: the page works under any path prefix (reverse proxies).
  base: './',
  build: {
    outDir: '../streamtomo/app/viewer/static',
    emptyOutDir: true,
    // One page, one bundle: h5web + three are large, but there is nothing to split.
    chunkSizeWarningLimit: 3000,
    sourcemap: false,
  },
  server: {
    // `npm run dev --prefix viewer` against a running `streamtomo view --port 8200`
    proxy: { '/hdf': 'http://127.0.0.1:8200', '/control': 'http://127.0.0.1:8200', '/viewer.json': 'http://127.0.0.1:8200' },
  },
});
