"""`smollm3 serve` driven by the official `openai` Python client (pinned in requirements.txt).

Run by `make test-openai`, which builds `smollm3`, installs the client into a venv under target/
and runs this file. It starts two servers of its own on free loopback ports, each with fresh data
and config folders: one with the SmolLM2 test model and an API key, one whose model file is missing
(every request there gets 503). Environment: SMOLLM3_BIN (the binary), SMOLLM3_TEST_MODEL (the GGUF).
"""

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import openai

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
BIN = os.environ.get("SMOLLM3_BIN", os.path.join(ROOT, "target", "debug", "smollm3"))
MODEL_FILE = os.environ.get(
    "SMOLLM3_TEST_MODEL", os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
)
MODEL = "SmolLM2-135M-Instruct.Q4_1"
KEY = "test-key-1234"
# The server's body limit (crates/server/src/api/body.rs: BODY_LIMIT).
BODY_LIMIT = 4 * 1024 * 1024
LONG = "Write a very long story about a dragon who learns to count, with many chapters."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """One `smollm3 serve` process with its own data, and its log for failures."""

    def __init__(self, model, key=None):
        self.dir = tempfile.TemporaryDirectory(prefix="smollm3-openai-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [BIN, "serve", "--model", model, "--port", str(self.port),
                "--data-dir", os.path.join(self.dir.name, "data"),
                "--config-dir", os.path.join(self.dir.name, "config"), "--context", "2048"]
        if key:
            args += ["--api-key", key]
        self.log = open(os.path.join(self.dir.name, "serve.log"), "w+")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def health(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def wait(self, ready):
        """Until /health answers (200 when `ready`, else any status); the log if it never does."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"smollm3 serve exited: {self.output()}")
            try:
                status, body = self.health()
                if status == 200 or not ready and body.get("status") != "loading":
                    return body
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"smollm3 serve never became ready: {self.output()}")

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("smollm3 serve did not stop on SIGTERM")
        finally:
            self.log.close()
            self.dir.cleanup()


served = None
failed = None


def setUpModule():
    global served, failed
    for path in (BIN, MODEL_FILE):
        if not os.path.exists(path):
            raise AssertionError(f"{path} is missing (make test-openai builds and fetches it)")
    served = Served(MODEL_FILE, key=KEY)
    failed = Served(os.path.join(tempfile.gettempdir(), "no-such-model.gguf"))
    served.wait(ready=True)
    failed.wait(ready=False)


def tearDownModule():
    for s in (served, failed):
        if s:
            s.stop()


def client(key=KEY, url=None):
    # No retries: a 503 or a dropped connection must show as it is.
    return openai.OpenAI(base_url=(url or served.url) + "/v1", api_key=key, max_retries=0, timeout=300)


def ask(content, **extra):
    params = dict(model=MODEL, messages=[{"role": "user", "content": content}], temperature=0,
                  max_tokens=16, seed=7)
    params.update(extra)
    return params


def stream_text(stream):
    """The content of a streamed chat answer, the chunks, and the finish reason."""
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, chunks, finish


class Models(unittest.TestCase):
    def test_the_loaded_model_is_listed_and_retrievable(self):
        models = client().models.list()
        self.assertEqual([m.id for m in models.data], [MODEL])
        self.assertEqual(client().models.retrieve(MODEL).id, MODEL)


class ChatCompletions(unittest.TestCase):
    def test_whole_and_streamed_give_the_same_text_at_temperature_zero(self):
        c = client()
        whole = c.chat.completions.create(**ask("What is the capital of France?"))
        choice = whole.choices[0]
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.model, MODEL)
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        u = whole.usage
        self.assertGreater(u.prompt_tokens, 0)
        self.assertGreater(u.completion_tokens, 0)
        self.assertLessEqual(u.completion_tokens, 16)
        self.assertEqual(u.total_tokens, u.prompt_tokens + u.completion_tokens)

        text, chunks, finish = stream_text(c.chat.completions.create(
            **ask("What is the capital of France?"), stream=True,
            stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertTrue(all(ch.object == "chat.completion.chunk" for ch in chunks))
        self.assertEqual(text, choice.message.content)
        self.assertEqual(finish, [choice.finish_reason])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, u.completion_tokens)
        self.assertEqual(chunks[-1].usage.prompt_tokens, u.prompt_tokens)

        # Without include_usage no chunk carries usage.
        _, chunks, _ = stream_text(c.chat.completions.create(
            **ask("What is the capital of France?"), stream=True))
        self.assertTrue(all(ch.usage is None for ch in chunks))

    def test_the_same_seed_gives_the_same_text_streamed_and_not_when_sampling(self):
        c = client()
        sampled = ask("Tell me about the sea.", temperature=1.0, seed=42, max_tokens=24)
        whole = c.chat.completions.create(**sampled).choices[0].message.content
        text, _, _ = stream_text(c.chat.completions.create(**sampled, stream=True))
        self.assertEqual(text, whole)
        other = c.chat.completions.create(**dict(sampled, seed=43)).choices[0].message.content
        self.assertNotEqual(other, whole, "another seed samples another answer")

    def test_a_conversation_with_system_and_assistant_turns_and_a_token_limit(self):
        r = client().chat.completions.create(**ask("", max_completion_tokens=3, messages=[
            {"role": "system", "content": "You are a patient maths teacher."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Thank you. " + LONG},
        ]))
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 3)
        self.assertTrue(r.choices[0].message.content)

    def test_a_stop_string_ends_the_answer_before_it(self):
        c = client()
        full = c.chat.completions.create(**ask("Count from 1 to 10, separated by commas.", max_tokens=40))
        text = full.choices[0].message.content
        self.assertIn("3", text, text)
        stop = text[text.index("3"):text.index("3") + 1]
        cut = c.chat.completions.create(**ask("Count from 1 to 10, separated by commas.", max_tokens=40,
                                              stop=[stop]))
        self.assertEqual(cut.choices[0].finish_reason, "stop")
        self.assertEqual(cut.choices[0].message.content, text[:text.index(stop)])

    def test_api_requests_do_not_become_chats(self):
        client().chat.completions.create(**ask("Hello"))
        req = urllib.request.Request(served.url + "/chats", headers={"Authorization": "Bearer " + KEY})
        with urllib.request.urlopen(req) as r:
            self.assertIn("No chats yet", r.read().decode())


class Completions(unittest.TestCase):
    def test_a_raw_prompt_is_continued_whole_and_streamed(self):
        c = client()
        whole = c.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                     temperature=0)
        self.assertEqual(whole.object, "text_completion")
        self.assertIn("Paris", whole.choices[0].text)
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True)
            if ch.choices)
        self.assertEqual(streamed, whole.choices[0].text)


class Errors(unittest.TestCase):
    def check(self, error, status, param=None, code=None):
        self.assertEqual(error.status_code, status, error)
        body = error.body
        self.assertIsInstance(body, dict, error)
        self.assertTrue(body.get("message"), error)
        self.assertIn("type", body)
        self.assertEqual(body.get("param"), param, body)
        if code:
            self.assertEqual(body.get("code"), code, body)

    def test_bad_parameters_are_400_naming_the_parameter(self):
        cases = [
            (dict(n=2), "n"),
            (dict(stream_options={"include_usage": True}), "stream_options"),
            (dict(temperature=-1), "temperature"),
            (dict(top_p=3), "top_p"),
            (dict(max_tokens=0), "max_tokens"),
            # Tools are offered to the model, but nothing can force it to call one.
            (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
                  tool_choice="required"), "tool_choice"),
            (dict(extra_body={"frobnicate": True}), "frobnicate"),
            (dict(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
            (dict(messages=[{"role": "user", "content": "word " * 5000}]), "messages"),
        ]
        for extra, param in cases:
            with self.subTest(param=param), self.assertRaises(openai.BadRequestError) as e:
                client().chat.completions.create(**ask("Hi", **extra))
            self.check(e.exception, 400, param)

    def test_malformed_json_is_400(self):
        req = urllib.request.Request(served.url + "/v1/chat/completions", data=b"{not json", method="POST",
                                     headers={"Authorization": "Bearer " + KEY,
                                              "Content-Type": "application/json"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        self.assertEqual(e.exception.code, 400)
        self.assertIn("message", json.load(e.exception)["error"])

    def test_a_wrong_method_is_405_in_the_same_shape(self):
        req = urllib.request.Request(served.url + "/v1/chat/completions", method="GET",
                                     headers={"Authorization": "Bearer " + KEY})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        self.assertEqual(e.exception.code, 405)
        self.assertEqual(e.exception.headers["Allow"], "POST")
        self.assertEqual(json.load(e.exception)["error"]["code"], "method_not_allowed")

    def test_json_sent_without_its_content_type_is_read_as_json(self):
        # What `curl -d` sends; llama.cpp's server reads the body as JSON whatever its type.
        body = json.dumps(ask("Hi", max_tokens=2)).encode()
        req = urllib.request.Request(served.url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Authorization": "Bearer " + KEY,
                                              "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req) as r:
            self.assertEqual(json.load(r)["object"], "chat.completion")

    def test_a_missing_or_wrong_key_is_401(self):
        with self.assertRaises(openai.AuthenticationError) as e:
            client(key="wrong").models.list()
        self.check(e.exception, 401, code="invalid_api_key")

    def test_an_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError) as e:
            client().chat.completions.create(**ask("Hi", model="gpt-4o"))
        self.check(e.exception, 404, "model", "model_not_found")

    def test_a_body_over_the_limit_is_413(self):
        with self.assertRaises(openai.APIStatusError) as e:
            client().chat.completions.create(**ask("x" * (BODY_LIMIT + 1)))
        self.check(e.exception, 413, code="request_too_large")

    def test_without_a_model_every_request_is_503_with_the_reason(self):
        with self.assertRaises(openai.InternalServerError) as e:
            client(key="none", url=failed.url).chat.completions.create(**ask("Hi"))
        self.check(e.exception, 503, code="model_not_ready")
        status, health = failed.health()
        self.assertEqual((status, health["status"]), (503, "failed"))
        self.assertEqual(client(key="none", url=failed.url).models.list().data, [])


class Clients(unittest.TestCase):
    def test_a_client_dropped_mid_stream_stops_its_answer_within_a_token(self):
        stream = client().chat.completions.create(**ask(LONG, max_tokens=1500), stream=True)
        seen = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen += 1
                if seen == 3:
                    break
        stream.close()
        deadline = time.monotonic() + 60
        while True:
            _, health = served.health()
            last = health.get("last")
            if health["queue"] == 0 and last and last["finish"] == "cancelled":
                break
            self.assertLess(time.monotonic(), deadline, f"the answer was not stopped: {health}")
            time.sleep(0.02)
        # What the socket buffered but the client never read: a token or two.
        self.assertLessEqual(last["completion_tokens"], seen + 3, last)

    def test_two_concurrent_clients_are_both_answered_as_if_alone(self):
        prompts = ["Name three colours.", "What is the largest planet?"]
        alone = [client().chat.completions.create(**ask(p, max_tokens=24)).choices[0].message.content
                 for p in prompts]
        got = [None, None]

        def run(i):
            text, _, _ = stream_text(client().chat.completions.create(
                **ask(prompts[i], max_tokens=24, user=f"client-{i}"), stream=True))
            got[i] = text

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        self.assertEqual(got, alone)


if __name__ == "__main__":
    unittest.main(verbosity=2)
