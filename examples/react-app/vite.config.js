import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The dev server runs on http://localhost:5173: start leadgate with
// LEADGATE_ALLOWED_ORIGINS=http://localhost:5173 so long-polling may cross origins.
export default defineConfig({
  plugins: [react()],
  server: { port: 5173, strictPort: true },
});
