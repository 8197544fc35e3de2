// AMQP conformance through RabbitMQ's Java client (com.rabbitmq:amqp-client, what Spring
// AMQP builds on), from Debian's librabbitmq-client-java.
//
// Usage: java -cp amqp-client.jar:slf4j-api.jar:DIR Conformance AMQP_URL NAME_PREFIX
//
// Run by tests/tests/amqp_conformance.rs against both RabbitMQ and the embedded broker.
// Exits non-zero (with a message) on the first mismatch; every wait is bounded. Last, it
// prints "READY <connection name>" and waits for the test to close that connection through
// the management API: the client's automatic recovery must then bring back its queue,
// binding and consumer, as an application relying on it expects.

import com.rabbitmq.client.*;

import java.io.IOException;
import java.util.*;
import java.util.concurrent.*;

public class Conformance {
    static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("MISMATCH: " + what);
            System.exit(1);
        }
    }

    /** basic.get until a message comes, within five seconds. */
    static GetResponse getWithin(Channel ch, String queue) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (System.nanoTime() < deadline) {
            GetResponse r = ch.basicGet(queue, true);
            if (r != null) return r;
            Thread.sleep(20);
        }
        return null;
    }

    /** The channel.close a failed synchronous method brought. */
    static AMQP.Channel.Close closeOf(IOException e) {
        return (AMQP.Channel.Close) ((ShutdownSignalException) e.getCause()).getReason();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: Conformance AMQP_URL NAME_PREFIX");
            System.exit(2);
        }
        String p = args[1];
        ConnectionFactory factory = new ConnectionFactory();
        factory.setUri(args[0]);
        factory.setConnectionTimeout(5000);
        factory.setNetworkRecoveryInterval(200);
        Connection conn = factory.newConnection(p + ".conn");
        check(conn.getServerProperties().get("capabilities") instanceof Map, "server capabilities");
        Channel ch = conn.createChannel();

        // Topic routing: one copy even when two bindings match; properties round-trip.
        ch.exchangeDeclare(p + ".topic", BuiltinExchangeType.TOPIC);
        String q = ch.queueDeclare().getQueue();
        check(q.startsWith("amq.gen-"), "server-named queue, got " + q);
        ch.queueBind(q, p + ".topic", "orders.*.created");
        ch.queueBind(q, p + ".topic", "orders.#");
        ch.confirmSelect();
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                .contentType("application/json").deliveryMode(2).priority(1)
                .headers(Map.of("k", "v", "n", 42, "nested", Map.of("a", true)))
                .messageId("m-1").correlationId("c-1").timestamp(new Date(1700000000000L))
                .build();
        ch.basicPublish(p + ".topic", "orders.eu.created", props, "{\"a\":1}".getBytes());
        ch.waitForConfirmsOrDie(5000);
        GetResponse g = ch.basicGet(q, false);
        check(g != null && "{\"a\":1}".equals(new String(g.getBody())), "basic.get body");
        check(g.getMessageCount() == 0, "one copy for two matching bindings, " + g.getMessageCount() + " left");
        Map<String, Object> h = g.getProps().getHeaders();
        check("v".equals(String.valueOf(h.get("k"))) && Integer.valueOf(42).equals(h.get("n")), "headers " + h);
        check("m-1".equals(g.getProps().getMessageId()), "message-id");
        check(g.getProps().getTimestamp().getTime() == 1700000000000L, "timestamp");
        ch.basicNack(g.getEnvelope().getDeliveryTag(), false, true);
        GetResponse again = ch.basicGet(q, true);
        check(again != null && again.getEnvelope().isRedeliver(), "nack with requeue: redelivered");

        // A consumer with manual acks under prefetch gets all, in order.
        ch.basicQos(10);
        for (int i = 0; i < 50; i++) ch.basicPublish("", q, null, ("m" + i).getBytes());
        ch.waitForConfirmsOrDie(5000);
        CountDownLatch fifty = new CountDownLatch(50);
        List<String> bodies = Collections.synchronizedList(new ArrayList<>());
        String tag = ch.basicConsume(q, false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String t, Envelope e, AMQP.BasicProperties pr, byte[] body) throws IOException {
                bodies.add(new String(body));
                getChannel().basicAck(e.getDeliveryTag(), false);
                fifty.countDown();
            }
        });
        check(fifty.await(5, TimeUnit.SECONDS), "50 deliveries under prefetch 10, got " + bodies.size());
        check("m0".equals(bodies.get(0)) && "m49".equals(bodies.get(49)), "in publish order");
        ch.basicCancel(tag);

        // A mandatory publish that routes nowhere comes back.
        CompletableFuture<Integer> returned = new CompletableFuture<>();
        ch.addReturnListener(r -> returned.complete(r.getReplyCode()));
        ch.basicPublish(p + ".topic", "nowhere", true, null, "x".getBytes());
        check(returned.get(5, TimeUnit.SECONDS) == 312, "basic.return 312 NO_ROUTE");
        ch.waitForConfirmsOrDie(5000);

        // Exchange-to-exchange binding into a headers exchange (x-match all).
        ch.exchangeDeclare(p + ".headers", BuiltinExchangeType.HEADERS, false, true, null);
        ch.exchangeBind(p + ".headers", p + ".topic", "audit.#");
        String hq = ch.queueDeclare("", false, true, true, null).getQueue();
        ch.queueBind(hq, p + ".headers", "", Map.of("x-match", "all", "type", "audit"));
        ch.basicPublish(p + ".topic", "audit.login",
                new AMQP.BasicProperties.Builder().headers(Map.of("type", "audit")).build(), "a".getBytes());
        ch.waitForConfirmsOrDie(5000);
        check(getWithin(ch, hq) != null, "through the exchange binding and the headers match");

        // Expiry dead-letters with x-death; purge reports its count.
        ch.exchangeDeclare(p + ".dlx", BuiltinExchangeType.FANOUT, false, true, null);
        String dlq = ch.queueDeclare(p + ".dead", false, false, true, null).getQueue();
        ch.queueBind(dlq, p + ".dlx", "");
        ch.queueDeclare(p + ".ttl", false, false, false,
                Map.of("x-message-ttl", 50, "x-dead-letter-exchange", p + ".dlx"));
        ch.basicPublish("", p + ".ttl", null, "expire me".getBytes());
        ch.waitForConfirmsOrDie(5000);
        GetResponse dead = getWithin(ch, dlq);
        check(dead != null && dead.getProps().getHeaders().containsKey("x-death"), "expired message dead-lettered with x-death");
        ch.queueDelete(p + ".ttl");
        ch.queueDeclare(p + ".purge", false, false, true, null);
        for (int i = 0; i < 7; i++) ch.basicPublish("", p + ".purge", null, "p".getBytes());
        ch.waitForConfirmsOrDie(5000);
        check(ch.queuePurge(p + ".purge").getMessageCount() == 7, "purge-ok count");

        // Channel errors close the channel with RabbitMQ's codes, not the connection.
        try {
            conn.createChannel().queueDeclare(p + ".purge", true, false, false, null);
            check(false, "redeclare with other flags accepted");
        } catch (IOException e) {
            AMQP.Channel.Close c = closeOf(e);
            check(c.getReplyCode() == 406 && c.getClassId() == 50 && c.getMethodId() == 10,
                    "406 on queue.declare, got " + c.getReplyCode() + " " + c.getReplyText());
        }
        try {
            conn.createChannel().queueDeclarePassive(p + ".missing");
            check(false, "passive declare of a missing queue accepted");
        } catch (IOException e) {
            check(closeOf(e).getReplyCode() == 404, "404 on a passive declare");
        }
        check(conn.isOpen(), "the connection outlives channel errors");

        // Transactions.
        Channel tx = conn.createChannel();
        tx.txSelect();
        tx.queueDeclare(p + ".tx", false, false, true, null);
        tx.basicPublish("", p + ".tx", null, "t".getBytes());
        tx.txRollback();
        check(tx.messageCount(p + ".tx") == 0, "rolled-back publish not queued");
        tx.basicPublish("", p + ".tx", null, "t".getBytes());
        tx.txCommit();
        check(tx.messageCount(p + ".tx") == 1, "committed publish queued");

        // RPC over direct reply-to.
        Channel server = conn.createChannel();
        server.queueDeclare(p + ".rpc", false, false, true, null);
        server.basicConsume(p + ".rpc", true, (t, d) -> server.basicPublish("", d.getProperties().getReplyTo(),
                new AMQP.BasicProperties.Builder().correlationId(d.getProperties().getCorrelationId()).build(),
                ("re:" + new String(d.getBody())).getBytes()), t -> { });
        Channel client = conn.createChannel();
        CompletableFuture<String> reply = new CompletableFuture<>();
        client.basicConsume("amq.rabbitmq.reply-to", true, (t, d) -> reply.complete(new String(d.getBody())), t -> { });
        client.basicPublish("", p + ".rpc",
                new AMQP.BasicProperties.Builder().replyTo("amq.rabbitmq.reply-to").correlationId("1").build(), "ping".getBytes());
        check("re:ping".equals(reply.get(5, TimeUnit.SECONDS)), "direct reply-to answer");

        // Deleting a consumed queue cancels its consumer (consumer_cancel_notify).
        Channel cc = conn.createChannel();
        cc.queueDeclare(p + ".cancel", false, false, false, null);
        CompletableFuture<String> cancelled = new CompletableFuture<>();
        cc.basicConsume(p + ".cancel", true, new DefaultConsumer(cc) {
            @Override
            public void handleCancel(String t) {
                cancelled.complete(t);
            }
        });
        ch.queueDelete(p + ".cancel");
        check(cancelled.get(5, TimeUnit.SECONDS) != null, "server-sent basic.cancel");

        // Automatic recovery after the broker closes the connection.
        CountDownLatch recovered = new CountDownLatch(1);
        ((Recoverable) conn).addRecoveryListener(new RecoveryListener() {
            public void handleRecovery(Recoverable r) {
                recovered.countDown();
            }

            public void handleRecoveryStarted(Recoverable r) {
            }
        });
        Channel events = conn.createChannel();
        events.exchangeDeclare(p + ".events", BuiltinExchangeType.FANOUT, false, true, null);
        String eq = events.queueDeclare().getQueue();
        events.queueBind(eq, p + ".events", "");
        BlockingQueue<String> got = new LinkedBlockingQueue<>();
        events.basicConsume(eq, true, (t, d) -> got.add(new String(d.getBody())), t -> { });
        events.basicPublish(p + ".events", "", null, "before".getBytes());
        check("before".equals(got.poll(5, TimeUnit.SECONDS)), "event before the close");
        System.out.println("READY " + p + ".conn");
        System.out.flush();
        check(recovered.await(20, TimeUnit.SECONDS), "recovery after the broker closed the connection");
        events.basicPublish(p + ".events", "", null, "after".getBytes());
        check("after".equals(got.poll(5, TimeUnit.SECONDS)), "recovered consumer gets what is published after");

        for (String queue : List.of(".purge", ".dead", ".tx")) ch.queueDelete(p + queue);
        ch.exchangeDelete(p + ".topic");
        ch.exchangeDelete(p + ".dlx");
        conn.close();
        System.out.println("all ok");
    }
}
