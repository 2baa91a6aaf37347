// The README's h5web snippet as a page (tests/system/test_h5web_app.py opens it in
// Chromium). Built into dist/ (git-ignored); esbuild compiles the TSX, no React plugin.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 5000, sourcemap: false },
});
