// Scenario 5: where the token is read from, every connect_error kind, and
// RS256 / ES256 gateways configured with LEADGATE_JWT_PUBLIC_KEY.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  TRANSPORTS,
  assertTransport,
  JWT_SECRET,
  startGateway,
  token,
  badTokens,
  keyPair,
  newJob,
  connect,
  connectError,
  subscribe,
  uniqueUser,
  sleep,
} from './lib/harness.mjs';
import { assertRefusal, assertJobStatusShape } from './lib/asserts.mjs';

let gw;
before(async () => {
  gw = await startGateway();
});
after(async () => {
  await gw?.stop();
});

/**
 * Proves which user a connected socket is: it may subscribe to `ownJob`, and
 * gets "job not found" for `foreignJob`.
 */
async function assertIdentity(socket, ownJob, foreignJob) {
  const { status } = await subscribe(socket, ownJob);
  assertJobStatusShape(status, ownJob);
  if (foreignJob) {
    const ack = await socket.timeout(5_000).emitWithAck('subscribe-job', foreignJob);
    assert.equal(ack?.ok, false, `the socket must not be the owner of ${foreignJob}: ${JSON.stringify(ack)}`);
  }
}

const sources = {
  'auth.token': (tok) => ({ auth: { token: tok } }),
  'Authorization: Bearer header': (tok) => ({ extraHeaders: { authorization: `Bearer ${tok}` } }),
  '?token= query': (tok) => ({ query: { token: tok } }),
  'token cookie': (tok) => ({ extraHeaders: { cookie: `theme=dark; token=${tok}; lang=de` } }),
};

for (const transport of TRANSPORTS) {
  describe(`token sources [${transport}]`, () => {
    for (const [name, opts] of Object.entries(sources)) {
      it(`reads the token from the ${name}`, async (t) => {
        const user = uniqueUser('src');
        const job = await newJob(gw, user);
        const foreign = await newJob(gw, uniqueUser('other'));
        const s = await connect(gw, { transport, ...opts(token({ sub: user })) });
        t.after(() => s.close());
        await assertTransport(s, transport);
        await assertIdentity(s, job, foreign);
      });

      it(`a bad token in the ${name} is refused as malformed`, async () => {
        const err = await connectError(gw, { transport, ...opts(badTokens.garbage()) });
        assertRefusal(err, 'malformed');
      });
    }

    const precedence = [
      ['auth.token', 'Authorization header', (a, b) => ({ auth: { token: a }, extraHeaders: { authorization: `Bearer ${b}` } })],
      ['Authorization header', '?token= query', (a, b) => ({ extraHeaders: { authorization: `Bearer ${a}` }, query: { token: b } })],
      ['?token= query', 'token cookie', (a, b) => ({ query: { token: a }, extraHeaders: { cookie: `token=${b}` } })],
      ['auth.token', 'token cookie', (a, b) => ({ auth: { token: a }, extraHeaders: { cookie: `token=${b}` } })],
    ];
    for (const [first, second, opts] of precedence) {
      it(`the ${first} wins over the ${second}`, async (t) => {
        const winner = uniqueUser('win');
        const loser = uniqueUser('lose');
        const winnerJob = await newJob(gw, winner);
        const loserJob = await newJob(gw, loser);
        const s = await connect(gw, { transport, ...opts(token({ sub: winner }), token({ sub: loser })) });
        t.after(() => s.close());
        await assertIdentity(s, winnerJob, loserJob);
      });
    }
  });

  describe(`connect_error kinds [${transport}]`, () => {
    it('no token at all: "missing"', async () => {
      assertRefusal(await connectError(gw, { transport }), 'missing');
    });

    it('empty auth object / empty token string: refused', async () => {
      assertRefusal(await connectError(gw, { transport, auth: {} }), 'missing');
      assertRefusal(await connectError(gw, { transport, auth: { token: '' } }));
    });

    it('garbage string: "malformed"', async () => {
      assertRefusal(await connectError(gw, { transport, token: badTokens.garbage() }), 'malformed');
      assertRefusal(await connectError(gw, { transport, token: 'a.b.c' }), 'malformed');
    });

    it('expired token: "expired"', async () => {
      assertRefusal(await connectError(gw, { transport, token: badTokens.expired() }), 'expired');
    });

    it('wrong secret: "signature"', async () => {
      assertRefusal(await connectError(gw, { transport, token: badTokens.wrongSecret() }), 'signature');
    });

    it('payload changed after signing (sub/roles forged): "signature"', async () => {
      assertRefusal(await connectError(gw, { transport, token: badTokens.tampered() }), 'signature');
    });

    it('alg "none" is refused', async () => {
      assertRefusal(await connectError(gw, { transport, token: badTokens.algNone(uniqueUser('none')) }));
      // with an admin role, and with a signature part that is the HS256 one
      const hs = token({ sub: 'mallory', roles: ['admin'] }).split('.');
      const noneHeader = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      assertRefusal(await connectError(gw, { transport, token: `${noneHeader}.${hs[1]}.${hs[2]}` }));
    });

    it('an algorithm that is not configured (RS256 / ES256 / HS512 on an HS256 gateway) is refused', async () => {
      const rs = keyPair('RS256');
      const es = keyPair('ES256');
      try {
        assertRefusal(await connectError(gw, { transport, token: token({ alg: 'RS256', key: rs.privateKey }) }));
        assertRefusal(await connectError(gw, { transport, token: token({ alg: 'ES256', key: es.privateKey }) }));
      } finally {
        rs.cleanup();
        es.cleanup();
      }
      // HS512 with the right secret: header says HS512, signature is HS512.
      const crypto = await import('node:crypto');
      const h = Buffer.from(JSON.stringify({ alg: 'HS512', typ: 'JWT' })).toString('base64url');
      const p = Buffer.from(JSON.stringify({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 })).toString('base64url');
      const sig = crypto.createHmac('sha512', JWT_SECRET).update(`${h}.${p}`).digest('base64url');
      assertRefusal(await connectError(gw, { transport, token: `${h}.${p}.${sig}` }));
    });

    it('a token without exp or without sub is refused', async () => {
      assertRefusal(await connectError(gw, { transport, token: token({ sub: 'alice', expiresIn: null }) }));
      assertRefusal(await connectError(gw, { transport, token: token({ sub: null }) }));
    });

    it('a token that is not valid yet (nbf an hour ahead) is refused', async () => {
      assertRefusal(await connectError(gw, { transport, token: token({ sub: 'alice', notBefore: 3600, expiresIn: 7200 }) }));
    });

    it('a valid token still connects (control case)', async (t) => {
      const s = await connect(gw, { transport, token: token({ sub: uniqueUser('ok') }) });
      t.after(() => s.close());
      assert.ok(s.connected);
    });

    it('refusals do not affect connected sockets or later connections', async (t) => {
      const user = uniqueUser('ok');
      const job = await newJob(gw, user);
      const s = await connect(gw, { transport, token: token({ sub: user }) });
      t.after(() => s.close());
      for (let i = 0; i < 5; i++) await connectError(gw, { transport, token: badTokens.garbage() });
      await sleep(100);
      assert.ok(s.connected);
      await assertIdentity(s, job);
      const s2 = await connect(gw, { transport, token: token({ sub: user }) });
      t.after(() => s2.close());
      await assertIdentity(s2, job);
    });
  });
}

for (const alg of ['RS256', 'ES256']) {
  describe(`${alg} gateway (LEADGATE_JWT_PUBLIC_KEY)`, () => {
    let agw;
    let keys;
    let otherKeys;
    before(async () => {
      keys = keyPair(alg);
      otherKeys = keyPair(alg);
      agw = await startGateway({ env: { LEADGATE_JWT_SECRET: undefined, LEADGATE_JWT_PUBLIC_KEY: keys.publicKeyPath } });
    });
    after(async () => {
      await agw?.stop();
      keys?.cleanup();
      otherKeys?.cleanup();
    });

    for (const transport of TRANSPORTS) {
      describe(`[${transport}]`, () => {
        it(`a valid ${alg} token connects and identifies the user`, async (t) => {
          const user = uniqueUser(alg.toLowerCase());
          const job = await newJob(agw, user);
          const foreign = await newJob(agw, uniqueUser('other'));
          const s = await connect(agw, { transport, token: token({ sub: user, alg, key: keys.privateKey }) });
          t.after(() => s.close());
          await assertIdentity(s, job, foreign);
        });

        it(`an ${alg} admin token sees other users' jobs`, async (t) => {
          const job = await newJob(agw, uniqueUser('alice'));
          const s = await connect(agw, {
            transport,
            token: token({ sub: uniqueUser('root'), roles: ['admin'], alg, key: keys.privateKey }),
          });
          t.after(() => s.close());
          await assertIdentity(s, job);
        });

        it(`an ${alg} token signed by another key: "signature"`, async () => {
          const err = await connectError(agw, { transport, token: token({ sub: 'alice', alg, key: otherKeys.privateKey }) });
          assertRefusal(err, 'signature');
        });

        it(`an expired ${alg} token: "expired"`, async () => {
          const err = await connectError(agw, { transport, token: token({ sub: 'alice', alg, key: keys.privateKey, expiresIn: -3600 }) });
          assertRefusal(err, 'expired');
        });

        it('HS256 tokens are refused, including one keyed with the public key PEM (algorithm confusion)', async () => {
          assertRefusal(await connectError(agw, { transport, token: token({ sub: 'alice' }) }));
          assertRefusal(await connectError(agw, { transport, token: token({ sub: 'alice', key: keys.publicPem }) }));
        });

        it('alg "none" and garbage are refused', async () => {
          assertRefusal(await connectError(agw, { transport, token: token({ sub: 'alice', alg: 'none' }) }));
          assertRefusal(await connectError(agw, { transport, token: 'garbage' }), 'malformed');
          assertRefusal(await connectError(agw, { transport }), 'missing');
        });

        it(`the other asymmetric algorithm is refused`, async () => {
          const other = alg === 'RS256' ? 'ES256' : 'RS256';
          const kp = keyPair(other);
          try {
            assertRefusal(await connectError(agw, { transport, token: token({ sub: 'alice', alg: other, key: kp.privateKey }) }));
          } finally {
            kp.cleanup();
          }
        });
      });
    }
  });
}

describe('JWT configuration', () => {
  it('refuses to start with both LEADGATE_JWT_SECRET and LEADGATE_JWT_PUBLIC_KEY', async () => {
    const keys = keyPair('ES256');
    let started;
    try {
      started = await startGateway({ env: { LEADGATE_JWT_PUBLIC_KEY: keys.publicKeyPath }, timeoutMs: 15_000 });
    } catch (err) {
      assert.match(err.message, /exited before listening/, `the gateway should exit with an error: ${err.message}`);
      return;
    } finally {
      keys.cleanup();
    }
    await started.stop();
    assert.fail('the gateway started although both a secret and a public key were configured');
  });
});
