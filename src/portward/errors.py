"""Errors that reach the user: each carries its exit code and prints as a few plain lines."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_RUNTIME = 1  # kernel refused, tool missing
EXIT_INPUT = 2  # bad input or refused (invalid policy, lockout guard)
EXIT_DIFFERENCE = 3  # verify found a difference


class PortwardError(Exception):
    """A failure with a message meant for people and an exit code meant for scripts."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    def lines(self) -> list[str]:
        return [f"portward: {line}" for line in str(self).splitlines()]

    def as_json(self) -> dict[str, object]:
        return {"error": str(self), "exit_code": self.exit_code}


class InputError(PortwardError):
    exit_code = EXIT_INPUT


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    key: str
    message: str  # "what is wrong — what to do"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def as_json(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "key": self.key, "message": self.message}


class BadLine(Exception):
    """One line's problem inside a reader, which adds the file and line number to make it a Problem."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class ProblemsError(InputError):
    """Every problem found in one input, each at FILE:LINE: key; subclasses name the kind of input."""

    what = "invalid input"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))

    def lines(self) -> list[str]:
        return [str(problem) for problem in self.problems]

    def as_json(self) -> dict[str, object]:
        return {
            "error": self.what,
            "exit_code": self.exit_code,
            "problems": [problem.as_json() for problem in self.problems],
        }


class PolicyError(ProblemsError):
    """Every problem found in a policy."""

    what = "invalid policy"
