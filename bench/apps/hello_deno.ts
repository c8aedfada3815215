// The bare Deno.serve hello world that fnhost is compared with (bench/run.py).
//   deno run --allow-net bench/apps/hello_deno.ts PORT
Deno.serve(
  { hostname: "127.0.0.1", port: Number(Deno.args[0]), onListen: () => {} },
  () => new Response("Hello, world!", { headers: { "content-type": "text/plain" } }),
);
