'use strict';
// The Express app used by the unit and end-to-end tests.
const express = require('express');
const { tenantContext, currentTenant, jobEnvelope } = require('..');

const SERVICE_KEY = 'service-key-for-tests';

function makeApp(opts) {
  const app = express();
  const jobs = [];
  app.use(tenantContext(opts));
  app.use(express.json());
  const whoami = (req, res) => {
    const t = currentTenant();
    const received = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (k.startsWith('x-tenant-') || k === 'x-request-id' || k === 'host') received[k] = v;
    }
    res.json({ tenant: t.tenant, plan: t.plan, subject: t.subject, source: t.source, requestId: t.requestId, received, reqTenant: req.tenant.tenant });
  };
  app.get(['/whoami', '/strict/whoami', '/api/*rest'], async (req, res) => {
    await new Promise((r) => setTimeout(r, 1)); // the context survives an await
    whoami(req, res);
  });
  app.post('/jobs', (req, res) => {
    const env = jobEnvelope(req.body, { serviceKey: SERVICE_KEY });
    jobs.push(env);
    res.json(env);
  });
  app.get('/healthz', (req, res) => res.json({ ok: currentTenant() === null }));
  app.jobs = jobs;
  return app;
}

/** /strict/... to `strict`, the rest to `normal` (plain node:http dispatch, path kept). */
function splitApp(normal, strict) {
  return (req, res) => (req.url.startsWith('/strict/') ? strict(req, res) : normal(req, res));
}

module.exports = { makeApp, splitApp, SERVICE_KEY };
