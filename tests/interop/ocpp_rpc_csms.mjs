// A strict OCPP 1.6J central system on the npm library ocpp-rpc, for the interop tests.
//
// An RPCServer with protocols ['ocpp1.6'] and strictMode: every CALL the station sends, every CALLRESULT it
// returns to a call of ours, and every frame we send is validated against ocpp-rpc's OCPP 1.6 JSON schemas
// (ajv + ajv-formats: "date-time" format -- here also with a required time zone, see below --, enums,
// string lengths, types, required and additional properties). Every validation failure is reported, not only logged: the test asserts that the
// station sent nothing that fails.
//
//   node ocpp_rpc_csms.mjs [--modules DIR] [--tags '{"TAG": "Accepted"}'] [--heartbeat 300]
//
// DIR holds node_modules/ocpp-rpc (tests/interop/setup.sh installs it into .interop/node with `npm ci`
// from tests/interop/package-lock.json). Listens on 127.0.0.1, on a free port.
//
// stdout, one JSON object per line:
//   {"event": "listening", "port": N, "dateTimeZoneRequired": true}
//   {"event": "client", "identity": ID, "protocol": "ocpp1.6", "endpoint": "/ocpp"}
//   {"event": "frame", "identity": ID, "direction": "in"|"out", "raw": "..."}     in: station -> CSMS
//   {"event": "validation_failure", "identity": ID, "direction": "in"|"out", "isCall": bool,
//    "messageId": ..., "method": ..., "params": ..., "result": ..., "code": ..., "error": ..., "errors": [...]}
//   {"event": "bad_message", "identity": ID, "raw": "...", "error": "..."}
//   {"event": "disconnect", "identity": ID, "code": N, "reason": "..."}
//   {"reply": N, "ok": true, "result": ...} / {"reply": N, "ok": false, "error": "...", "code": "..."}
// stdin, one JSON object per line:
//   {"id": N, "cmd": "call", "identity": ID, "method": "RemoteStartTransaction", "params": {...}}
//   {"id": N, "cmd": "clients"}

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
    options: {
        modules: { type: 'string', default: resolve(here, '..', '..', '.interop', 'node') },
        tags: { type: 'string', default: '{}' },
        heartbeat: { type: 'string', default: '300' },
    },
});
const require = createRequire(join(resolve(args.modules), 'package.json'));
const { RPCServer, createRPCError, createValidator } = require('ocpp-rpc');

// ocpp-rpc's own OCPP 1.6 schemas and validator, with one thing made stricter: ajv-formats 2.1.1 (the
// version ocpp-rpc pins) lets a "date-time" without a time zone pass (it compares the absent zone with ""
// instead of undefined), while RFC 3339, which OCPP-J 1.6 prescribes for every time value, requires one.
const RFC3339_DATE_TIME = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const validator16 = createValidator('ocpp1.6', require('ocpp-rpc/lib/schemas/ocpp1_6.json'));
const ajv16 = validator16._ajv;
const formatDateTime = ajv16?.formats?.['date-time'];
const zoneRequired = typeof formatDateTime?.validate === 'function';
if (zoneRequired) {
    ajv16.addFormat('date-time', {
        ...formatDateTime,
        validate: (value) => RFC3339_DATE_TIME.test(value) && formatDateTime.validate(value),
    });
}

const tags = Object.fromEntries(Object.entries(JSON.parse(args.tags)).map(([k, v]) => [k.toUpperCase(), v]));
const heartbeat = Number(args.heartbeat);
const clients = new Map();
let nextTransactionId = 1001;

function emit(message) {
    process.stdout.write(JSON.stringify(message) + '\n');
}

function idTagInfo(idTag) {
    return { status: tags[String(idTag).toUpperCase()] ?? 'Invalid' };
}

const server = new RPCServer({
    protocols: ['ocpp1.6'],
    strictMode: true,
    strictModeValidators: [validator16],  // replaces the standard ocpp1.6 one (same schemas, see above)
    respondWithDetailedErrors: true,
});

server.auth((accept, reject, handshake) => {
    accept({ identity: handshake.identity, endpoint: handshake.endpoint });
});

server.on('client', (client) => {
    const identity = client.identity;
    clients.set(identity, client);
    emit({ event: 'client', identity, protocol: client.protocol, endpoint: client.session.endpoint });

    client.on('message', ({ message, outbound }) => {
        emit({ event: 'frame', identity, direction: outbound ? 'out' : 'in', raw: String(message) });
    });
    client.on('strictValidationFailure', ({ messageId, method, params, result, error, outbound, isCall }) => {
        emit({
            event: 'validation_failure', identity, direction: outbound ? 'out' : 'in', isCall,
            messageId, method, params, result: result ?? null,
            code: error?.rpcErrorCode ?? null, error: String(error?.message ?? error),
            errors: error?.details?.errors ?? null,
        });
    });
    client.on('badMessage', ({ buffer, error }) => {
        emit({ event: 'bad_message', identity, raw: String(buffer), error: String(error?.message ?? error) });
    });
    client.on('close', ({ code, reason }) => {
        if (clients.get(identity) === client) clients.delete(identity);
        emit({ event: 'disconnect', identity, code, reason: String(reason ?? '') });
    });

    const now = () => new Date().toISOString();
    client.handle('BootNotification', () => ({ status: 'Accepted', currentTime: now(), interval: heartbeat }));
    client.handle('Heartbeat', () => ({ currentTime: now() }));
    client.handle('StatusNotification', () => ({}));
    client.handle('Authorize', ({ params }) => ({ idTagInfo: idTagInfo(params.idTag) }));
    client.handle('StartTransaction', ({ params }) => ({
        transactionId: nextTransactionId++,
        idTagInfo: idTagInfo(params.idTag),
    }));
    client.handle('MeterValues', () => ({}));
    client.handle('StopTransaction', ({ params }) => (params.idTag ? { idTagInfo: idTagInfo(params.idTag) } : {}));
    client.handle('DataTransfer', () => ({ status: 'UnknownVendorId' }));
    client.handle('DiagnosticsStatusNotification', () => ({}));
    client.handle('FirmwareStatusNotification', () => ({}));
    client.handle(({ method }) => {
        throw createRPCError('NotImplemented', `${method} is not implemented by this test CSMS`);
    });
});

async function command(request) {
    switch (request.cmd) {
        case 'call': {
            const client = clients.get(request.identity);
            if (!client) throw new Error(`station ${request.identity} is not connected`);
            return await client.call(request.method, request.params ?? {}, { callTimeoutMs: request.timeoutMs ?? 15000 });
        }
        case 'clients':
            return [...clients.keys()];
        default:
            throw new Error(`unknown command ${request.cmd}`);
    }
}

const input = createInterface({ input: process.stdin });
const pending = new Set();
input.on('line', (line) => {
    if (!line.trim()) return;
    const request = JSON.parse(line);
    const job = command(request).then(
        (result) => emit({ reply: request.id, ok: true, result: result ?? null }),
        (error) => emit({ reply: request.id, ok: false, error: String(error?.message ?? error),
                          code: error?.rpcErrorCode ?? null, details: error?.details ?? null }),
    );
    pending.add(job);
    job.finally(() => pending.delete(job));
});
input.on('close', async () => {
    await Promise.allSettled([...pending]);
    await server.close({ force: true });
    process.exit(0);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, async () => {
        await server.close({ force: true });
        process.exit(0);
    });
}

const httpServer = await server.listen(0, '127.0.0.1');
emit({ event: 'listening', port: httpServer.address().port, dateTimeZoneRequired: zoneRequired });
