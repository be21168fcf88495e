// The platform API's side of `video-queue`, for the tests: the real Node bullmq producer.
//
//   node producer.mjs REDIS_URL QUEUE [PREFIX]
//
// Reads one JSON command per line on stdin, answers one JSON line on stdout per command:
//   {"op":"add","name":"transcode","data":{...},"opts":{...}} -> {"ok":true,"id":"1","timestamp":...}
//       exactly what the API does: queue.add('transcode', {lectureId, rawVideoUrl, instructorId})
//   {"op":"get","id":"1"} -> {"ok":true,"job":{id,state,attemptsMade,attemptsStarted,stalledCounter,
//                              progress,returnvalue,failedReason,finishedOn}} (job null if gone)
//   {"op":"counts"}       -> {"ok":true,"counts":{waiting,active,delayed,completed,failed,...}}
import { Queue, Job } from 'bullmq';
import IORedis from 'ioredis';
import readline from 'node:readline';

const [url, queueName = 'video-queue', prefix = 'bull'] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });
connection.on('error', () => {}); // reconnects on its own; the tests restart Redis on purpose
const queue = new Queue(queueName, { connection, prefix });
queue.on('error', () => {});

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

async function handle(cmd) {
  switch (cmd.op) {
    case 'add': {
      const job = await queue.add(cmd.name ?? 'transcode', cmd.data, cmd.opts ?? {});
      return { ok: true, id: job.id, timestamp: job.timestamp };
    }
    case 'get': {
      const job = await Job.fromId(queue, cmd.id);
      if (!job) return { ok: true, job: null };
      const state = await job.getState();
      return {
        ok: true,
        job: {
          id: job.id, name: job.name, data: job.data, state, attemptsMade: job.attemptsMade,
          attemptsStarted: job.attemptsStarted, stalledCounter: job.stalledCounter,
          progress: job.progress, returnvalue: job.returnvalue, failedReason: job.failedReason,
          finishedOn: job.finishedOn ?? null,
        },
      };
    }
    case 'counts':
      return { ok: true, counts: await queue.getJobCounts() };
    default:
      return { ok: false, error: `unknown op ${cmd.op}` };
  }
}

await queue.waitUntilReady();
out({ ready: true });
const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  if (!line.trim()) return;
  chain = chain.then(async () => {
    try {
      out(await handle(JSON.parse(line)));
    } catch (err) {
      out({ ok: false, error: String(err && err.message || err) });
    }
  });
});
rl.on('close', () => {
  chain.then(async () => {
    await queue.close();
    await connection.quit().catch(() => {});
    process.exit(0);
  });
});
