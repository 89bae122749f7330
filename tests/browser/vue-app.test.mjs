// examples/vue-app (the Options API component of seed 001) in headless Chromium.
import { jobViewTests } from './lib/job-view.mjs';

jobViewTests('vue-app');
