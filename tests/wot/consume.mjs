// Consumes a wasmtwin twin as a generic W3C WoT consumer would, with
// Eclipse Thingweb node-wot (@node-wot/core + @node-wot/binding-http):
// fetches the twin's Thing Description with the bearer token, reads every
// property, subscribes to an event, observes a property, invokes an action
// with input, and waits (bounded) for one event and one observation.
//
//   WASMTWIN_TOKEN=… node consume.mjs TD_URL [options]
//
// Options (defaults fit the `machine` model):
//   --event NAME        event to subscribe to      (health_changed)
//   --observe NAME      property to observe        (temperature)
//   --action NAME       action to invoke           (set_speed)
//   --input JSON        the action's input         ({"rpm": 1200})
//   --timeout-ms N      wait for the notifications (20000)
//
// Prints `wot: subscribed` on standard error once the subscriptions are open
// (whoever drives the twin can then make it change), and one JSON summary on
// standard output: {"ok", "properties", "action", "event", "observed",
// "errors"}. Exits 1 if anything failed or timed out, 2 on bad usage.

// Both packages are CommonJS: their exports come as one default object.
import core from "@node-wot/core";
import http from "@node-wot/binding-http";

const { Servient } = core;
const { HttpClientFactory } = http;

function usage(message) {
    process.stderr.write(`consume.mjs: ${message}\nusage: WASMTWIN_TOKEN=… node consume.mjs TD_URL [--event E] [--observe P] [--action A] [--input JSON] [--timeout-ms N]\n`);
    process.exit(2);
}

function parseArgs(argv) {
    const options = {
        event: "health_changed",
        observe: "temperature",
        action: "set_speed",
        input: { rpm: 1200 },
        timeoutMs: 20000,
    };
    const rest = [];
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) usage(`${arg} needs a value`);
            return argv[++i];
        };
        switch (arg) {
            case "--event": options.event = value(); break;
            case "--observe": options.observe = value(); break;
            case "--action": options.action = value(); break;
            case "--input":
                try { options.input = JSON.parse(value()); } catch (e) { usage(`--input is not JSON: ${e.message}`); }
                break;
            case "--timeout-ms":
                options.timeoutMs = Number(value());
                if (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
                break;
            default:
                if (arg.startsWith("--")) usage(`unknown option ${arg}`);
                rest.push(arg);
        }
    }
    if (rest.length !== 1) usage("one TD URL is needed");
    options.tdUrl = rest[0];
    return options;
}

// node-wot's SSE client opens an EventSource on the form's href alone: it
// sends no Authorization header, whatever the security scheme. Forms whose
// security is a bearer token `in: "query"` (the TD says so for its event
// streams, RFC 6750 §2.3) get the token in that query parameter here, and
// their form-level security is then dropped (node-wot 0.9 cannot apply it).
function applyQueryTokens(td, token) {
    const definitions = td.securityDefinitions ?? {};
    for (const kind of ["properties", "actions", "events"]) {
        for (const affordance of Object.values(td[kind] ?? {})) {
            for (const form of affordance.forms ?? []) {
                const schemes = (form.security ?? []).map((name) => definitions[name]);
                const query = schemes.find((s) => s?.scheme === "bearer" && s.in === "query");
                if (query === undefined) continue;
                const separator = form.href.includes("?") ? "&" : "?";
                form.href += `${separator}${encodeURIComponent(query.name)}=${encodeURIComponent(token)}`;
                delete form.security;
            }
        }
    }
}

// An interaction's value: by its schema when it has one, else as JSON.
async function valueOf(output) {
    if (output.schema != null) return output.value();
    const text = Buffer.from(await output.arrayBuffer()).toString();
    return text.length === 0 ? null : JSON.parse(text);
}

// Resolves with the first value `subscribe` delivers, or rejects after
// `timeoutMs`; `subscribe(listener, onError)` returns the subscription.
function firstValue(what, timeoutMs, subscribe) {
    let settle;
    const first = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${what} within ${timeoutMs} ms`)), timeoutMs);
        settle = (error, value) => {
            clearTimeout(timer);
            if (error) reject(error); else resolve(value);
        };
    });
    const subscription = subscribe(
        (output) => valueOf(output).then((v) => settle(null, v), (e) => settle(e)),
        (e) => settle(new Error(`${what}: ${e?.message ?? e}`)),
    );
    return { subscription, first };
}

async function main() {
    const options = parseArgs(process.argv.slice(2));
    const token = process.env.WASMTWIN_TOKEN;
    if (!token) usage("WASMTWIN_TOKEN is not set");
    const summary = { ok: false, properties: null, action: null, event: null, observed: null, errors: [] };
    const fail = (step, e) => summary.errors.push(`${step}: ${e?.message ?? e}`);

    const answer = await fetch(options.tdUrl, {
        headers: { Authorization: `Bearer ${token}`, Accept: "application/td+json" },
    });
    if (!answer.ok) throw new Error(`fetching the TD: ${answer.status} ${await answer.text()}`);
    const td = await answer.json();
    applyQueryTokens(td, token);

    const servient = new Servient();
    servient.addClientFactory(new HttpClientFactory());
    servient.addCredentials({ [td.id]: { token } });
    const WoT = await servient.start();
    const thing = await WoT.consume(td);

    try {
        const read = await thing.readAllProperties();
        summary.properties = {};
        for (const [name, output] of read) summary.properties[name] = await output.value();
    } catch (e) {
        fail("readAllProperties", e);
    }

    const event = firstValue(`event ${options.event}`, options.timeoutMs, (listener, onError) =>
        thing.subscribeEvent(options.event, listener, onError));
    const observed = firstValue(`change of ${options.observe}`, options.timeoutMs, (listener, onError) =>
        thing.observeProperty(options.observe, listener, onError));
    const subscriptions = [];
    for (const [step, s] of [["subscribeEvent", event], ["observeProperty", observed]]) {
        try {
            subscriptions.push(await s.subscription);
            s.open = true;
        } catch (e) {
            fail(step, e);
            s.first.catch(() => {});
        }
    }
    process.stderr.write("wot: subscribed\n");

    try {
        const output = await thing.invokeAction(options.action, options.input);
        summary.action = { name: options.action, input: options.input, output: await output.value() };
    } catch (e) {
        fail(`invokeAction ${options.action}`, e);
    }

    const [gotEvent, gotObserved] = await Promise.allSettled([event.first, observed.first]);
    if (gotEvent.status === "fulfilled") summary.event = { name: options.event, data: gotEvent.value };
    else if (event.open) fail("subscribeEvent", gotEvent.reason);
    if (gotObserved.status === "fulfilled") summary.observed = { name: options.observe, value: gotObserved.value };
    else if (observed.open) fail("observeProperty", gotObserved.reason);

    for (const subscription of subscriptions) {
        try { await subscription.stop(); } catch (e) { fail("unsubscribing", e); }
    }
    await servient.shutdown();
    summary.ok = summary.errors.length === 0;
    return summary;
}

main().then(
    (summary) => {
        process.stdout.write(`${JSON.stringify(summary)}\n`);
        process.exit(summary.ok ? 0 : 1);
    },
    (e) => {
        process.stdout.write(`${JSON.stringify({ ok: false, errors: [String(e?.stack ?? e)] })}\n`);
        process.exit(1);
    },
);
