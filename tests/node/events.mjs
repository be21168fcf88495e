// The platform API's QueueEvents listener, for the tests: prints every queue event as one
// JSON line {"event": "...", ...args} on stdout, from the start of the queue's event stream.
//
//   node events.mjs REDIS_URL QUEUE [PREFIX]
import { QueueEvents } from 'bullmq';

const [url, queueName = 'video-queue', prefix = 'bull'] = process.argv.slice(2);
const events = new QueueEvents(queueName, {
  connection: { url, maxRetriesPerRequest: null },
  prefix,
  lastEventId: '0-0',
  blockingTimeout: 1000,
});
events.on('error', () => {}); // reconnects on its own; the tests restart Redis on purpose

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
for (const name of ['added', 'waiting', 'active', 'progress', 'completed', 'failed', 'stalled',
                    'delayed', 'retries-exhausted', 'removed']) {
  events.on(name, (args, id) => out({ event: name, ...args, eventId: id, at: Date.now() / 1000 }));
}
await events.waitUntilReady();
out({ event: 'ready' });
const stop = async () => { await events.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
