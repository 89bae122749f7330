// examples/react-app (the useJobUpdates hook of seed 001) in headless Chromium.
import { jobViewTests } from './lib/job-view.mjs';

jobViewTests('react-app');
