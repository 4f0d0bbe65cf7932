'use strict';
// HTTP helpers for the tests (not a test file itself).
const http = require('node:http');

const REFUSED = { error: 'invalid_tenant_signature' };

function listen(handler) {
  return new Promise((resolve) => {
    const srv = http.createServer(handler).listen(0, '127.0.0.1', () => resolve(srv));
  });
}

function send(port, method, path, hdrs, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const h = Array.isArray(hdrs) ? hdrs.flat() : { ...hdrs };
    if (data) {
      if (Array.isArray(h)) h.push('content-type', 'application/json', 'content-length', String(data.length));
      else Object.assign(h, { 'content-type': 'application/json', 'content-length': data.length });
    }
    const req = http.request({ host: '127.0.0.1', port, method, path, headers: h, setHost: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = text; }
        resolve({ status: res.statusCode, type: res.headers['content-type'], body: json });
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}

const isRefused = (r) => r.status === 401 && r.type === 'application/json' && JSON.stringify(r.body) === JSON.stringify(REFUSED);

module.exports = { listen, send, isRefused, REFUSED };
