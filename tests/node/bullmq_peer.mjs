// A Node BullMQ peer for the compatibility tests (tests/test_node_flows.py): what a Node
// producer or worker of the same queues would do. One JSON request on stdin, one JSON answer
// on stdout.
//   add-flow: {"redis": url, "prefix": p, "flow": <FlowProducer tree>} -> {"ids": [...]}
//   work:     {"redis": url, "prefix": p, "queue": q, "fail": [names], "until": job id,
//              "timeoutMs": n} -> {"runs": [names], "parentSaw": {...}, "state": s}
//             runs a Worker until the job `until` is completed or failed.
import { FlowProducer, Queue, UnrecoverableError, Worker } from "bullmq";

function connection(url) {
  const parsed = new URL(url);
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    username: decodeURIComponent(parsed.username) || undefined,
    password: decodeURIComponent(parsed.password) || undefined,
    db: Number(parsed.pathname.slice(1) || 0),
    maxRetriesPerRequest: null,
  };
}

async function readRequest() {
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  return JSON.parse(text);
}

function ids(node) {
  return [node.job.id, ...(node.children || []).flatMap(ids)];
}

async function addFlow(request) {
  const producer = new FlowProducer({ connection: connection(request.redis), prefix: request.prefix });
  try {
    const tree = await producer.add(request.flow);
    return { ids: ids(tree) };
  } finally {
    await producer.close();
  }
}

async function work(request) {
  const opts = { connection: connection(request.redis), prefix: request.prefix };
  const failing = new Set(request.fail || []);
  const runs = [];
  let parentSaw = null;
  const worker = new Worker(
    request.queue,
    async (job) => {
      runs.push(job.name);
      if (job.id === request.until) {
        parentSaw = await job.getChildrenValues();
        return { finalized: true };
      }
      if (failing.has(job.name)) throw new UnrecoverableError(`${job.name} failed`);
      return { step: job.name };
    },
    opts,
  );
  const queue = new Queue(request.queue, opts);
  const deadline = Date.now() + (request.timeoutMs || 20000);
  let state = await queue.getJobState(request.until);
  while (!["completed", "failed"].includes(state) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    state = await queue.getJobState(request.until);
  }
  await worker.close();
  await queue.close();
  return { runs, parentSaw, state };
}

const commands = { "add-flow": addFlow, work };
const command = commands[process.argv[2]];
if (!command) {
  const help = ["--help", "-h"].includes(process.argv[2]);
  (help ? process.stdout : process.stderr).write(`usage: node bullmq_peer.mjs ${Object.keys(commands).join("|")} < request.json\n`);
  process.exit(help ? 0 : 2);
}
const answer = await command(await readRequest());
process.stdout.write(JSON.stringify(answer) + "\n");
process.exit(0);
